/**
 * What the server itself says about the room in `media-state` messages (from 0): the one place
 * that turns them into indicators. Today: recording (the header's "● Recording"). Further server
 * states (a live stream, captions) belong here too, each as one more branch.
 */
import { $ } from '../dom.js';

export function showServerState(detail, { notices } = {}) {
  if ('recording' in detail) {
    const indicator = $('#recording');
    const was = !indicator.hidden;
    indicator.hidden = !detail.recording;
    if (notices && was !== Boolean(detail.recording)) {
      notices.show(detail.recording ? 'This meeting is being recorded.' : 'Recording stopped.');
    }
  }
}

/** Every server indicator off: the meeting is left. */
export function clearServerState() {
  $('#recording').hidden = true;
}
