/** Invite links: `/?meeting=ID&code=CODE` opens the meeting's pre-join screen, signing in first if
 * needed. The code is read once and kept out of the address bar and the history. */

const CODE_KEY = (meetingId) => `huiyi.code.${meetingId}`;

export function inviteLink(meeting) {
  const link = new URL('/', location.origin);
  link.search = new URLSearchParams({ meeting: String(meeting.meeting_id), code: meeting.invite_code }).toString();
  return link.href;
}

/** The meeting an invite link in the address names (its code kept for joining), or null. */
export function takeInviteFromAddress(params) {
  const meeting = params.get('meeting');
  if (!meeting || !/^[0-9]+$/.test(meeting)) return null;
  const code = params.get('code');
  if (code) rememberCode(meeting, code);
  history.replaceState(null, '', `${location.pathname}#/m/${meeting}`);
  return meeting;
}

export function rememberCode(meetingId, code) {
  if (code) sessionStorage.setItem(CODE_KEY(meetingId), code);
}

export function codeFor(meetingId) {
  return sessionStorage.getItem(CODE_KEY(meetingId));
}

export function forgetCode(meetingId) {
  sessionStorage.removeItem(CODE_KEY(meetingId));
}
