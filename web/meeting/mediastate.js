/**
 * What the server itself says about the room in `media-state` messages (from 0): the one place
 * that turns them into indicators: recording (the header's "● Recording"), a live stream ("● Live"),
 * live captions (shown by the meeting screen's captions) and live noise suppression (the tiles'
 * "NS" badges and the toggle, kept by noise.js).
 */
import { $ } from '../dom.js';

export function showServerState(detail, { notices, captions, noise, nameOf } = {}) {
  if (noise?.apply(detail)) {
    if (notices && detail.by !== null && detail.by !== undefined) notices.show(noiseNotice(detail, noise.myId, nameOf));
    return;
  }
  if ('recording' in detail) {
    indicate('#recording', detail.recording, notices, ['This meeting is being recorded.', 'Recording stopped.']);
  }
  if ('streaming' in detail) {
    indicate('#live', detail.streaming, notices, ['This meeting is being streamed live.', 'The live stream stopped.']);
  }
  if ('captions' in detail && captions) {
    const was = captions.on;
    captions.show(Boolean(detail.captions));
    if (notices && was !== Boolean(detail.captions)) notices.show(detail.captions ? 'Live captions are on.' : 'Live captions are off.');
  }
}

function noiseNotice(detail, myId, nameOf) {
  const state = detail.noise_suppression ? 'on' : 'off';
  if (detail.scope === 'room') return `Noise suppression is ${state} for everyone.`;
  if (detail.user_id === myId) return `Noise suppression is ${state} for your microphone.`;
  return `Noise suppression is ${state} for ${nameOf ? nameOf(detail.user_id) : 'someone'}.`;
}

function indicate(selector, on, notices, [started, stopped]) {
  const indicator = $(selector);
  const was = !indicator.hidden;
  indicator.hidden = !on;
  if (notices && was !== Boolean(on)) notices.show(on ? started : stopped);
}

/** Every server indicator off: the meeting is left. */
export function clearServerState() {
  $('#recording').hidden = true;
  $('#live').hidden = true;
}
