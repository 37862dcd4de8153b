/** What a host or moderator can do to the meeting and the people in it, each one API call as
 * docs/meetings.md describes it. */
export class Moderation {
  constructor(api, meetingId) {
    this.api = api;
    this.meetingId = meetingId;
    this.base = `/meetings/${meetingId}`;
  }

  admit(userId) {
    return this.api.call('POST', `${this.base}/participants`, { user_id: userId });
  }

  /** Turning a waiting person away removes them: they cannot knock again until added. */
  deny(userId) {
    return this.api.call('DELETE', `${this.base}/participants/${userId}`);
  }

  remove(userId) {
    return this.api.call('DELETE', `${this.base}/participants/${userId}`);
  }

  setRole(userId, role) {
    return this.api.call('PUT', `${this.base}/participants/${userId}/role`, { role });
  }

  /** Mutes someone on the media server: nobody hears them until they unmute themselves. */
  async mute(userId, kind = 'audio') {
    const peers = await this.api.call('GET', `/webrtc/room/${this.meetingId}/peers`);
    const theirs = peers.filter((peer) => peer.user_id === userId);
    if (!theirs.length) throw new Error('They are not connected to the media server.');
    await Promise.all(theirs.map((peer) => this.api.call('POST', `/webrtc/peer/${peer.peer_id}/media`, { [kind]: false })));
  }

  /** Locked: everyone new waits until admitted (the meeting's waiting room). */
  setLocked(locked) {
    return this.api.call('PUT', this.base, { settings: { enable_waiting_room: locked } });
  }

  /** Recording needs the meeting's setting on: the host's button turns it on first. */
  async startRecording(meeting) {
    if (!meeting.settings?.enable_recording) {
      Object.assign(meeting, await this.api.call('PUT', this.base, { settings: { enable_recording: true } }));
    }
    return this.api.call('POST', `${this.base}/recording/start`, { layout: 'speaker' });
  }

  stopRecording() {
    return this.api.call('POST', `${this.base}/recording/stop`);
  }

  /** Live captions of the whole meeting on or off; the room hears it as `media-state`. */
  setCaptions(enabled, language = 'en') {
    return this.api.call('POST', `${this.base}/captions`, { enabled, language });
  }

  /** Live noise suppression of every microphone on or off; the room hears it as `media-state`. */
  setNoiseSuppression(enabled) {
    return this.api.call('POST', `/webrtc/room/${this.meetingId}/noise-suppression`, { enabled });
  }

  endForAll() {
    return this.api.call('POST', `${this.base}/end`);
  }
}
