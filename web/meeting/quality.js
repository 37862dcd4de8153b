/**
 * Connection quality from the browser's own statistics (getStats), sampled every two seconds:
 * per remote person from what arrives of them (loss, frame rate), and for the user's own
 * connection from what is sent (a limit the encoder reports, the ICE state). The same samples feed
 * the debug panel's lines.
 */
const INTERVAL_MS = 2000;

function level(loss, stalled) {
  if (stalled || loss > 0.08) return 'poor';
  if (loss > 0.02) return 'fair';
  return 'good';
}

export class QualityMonitor {
  #timer = null;
  #previous = new Map();

  /** @param {(report: {users: Map<number, string>, own: string, lines: string[]}) => void} onReport */
  constructor(client, onReport) {
    this.client = client;
    this.onReport = onReport;
  }

  start() {
    this.#timer = setInterval(() => this.#sample().catch(() => {}), INTERVAL_MS);
  }

  stop() {
    clearInterval(this.#timer);
  }

  #delta(key, value, now) {
    now.set(key, value);
    const before = this.#previous.get(key);
    return before === undefined ? null : Math.max(0, value - before);
  }

  async #sample() {
    const { inbound, outbound } = await this.client.getStats();
    const now = new Map();
    const users = new Map();
    const lines = [];
    const seconds = INTERVAL_MS / 1000;
    const byUser = new Map();
    for (const s of inbound) {
      if (!s.user_id) continue;
      const received = this.#delta(`${s.mid} packets`, s.packetsReceived ?? 0, now);
      const lost = this.#delta(`${s.mid} lost`, s.packetsLost ?? 0, now);
      const bytes = this.#delta(`${s.mid} bytes`, s.bytesReceived ?? 0, now);
      const loss = received === null || received + lost === 0 ? 0 : lost / (received + lost);
      const stalled = received === 0;
      const entry = byUser.get(s.user_id) ?? [];
      // Audio of someone muted and video of a camera turned off send nothing: not a bad line.
      if (received !== null && !(stalled && s.kind === 'audio')) entry.push(level(loss, stalled && s.kind === 'video' && this.#cameraOn(s.user_id)));
      byUser.set(s.user_id, entry);
      const size = s.kind === 'video' ? ` ${s.frameWidth ?? 0}x${s.frameHeight ?? 0} ${Math.round(s.framesPerSecond ?? 0)}fps` : '';
      const kbps = bytes === null ? 0 : Math.round((bytes * 8) / seconds / 1000);
      lines.push(`in  user ${s.user_id} ${s.kind}${size} ${kbps} kbps lost ${s.packetsLost ?? 0} nacks ${s.nackCount ?? 0}`);
    }
    for (const [user, levels] of byUser) {
      users.set(user, levels.includes('poor') ? 'poor' : levels.includes('fair') ? 'fair' : levels.length ? 'good' : 'unknown');
    }
    let own = 'good';
    for (const s of outbound) {
      const key = `out ${s.kind} ${s.rid ?? ''}`;
      const bytes = this.#delta(`${key} bytes`, s.bytesSent ?? 0, now);
      const frames = this.#delta(`${key} frames`, s.framesSent ?? 0, now);
      const kbps = bytes === null ? 0 : Math.round((bytes * 8) / seconds / 1000);
      const fps = frames === null ? 0 : Math.round(frames / seconds);
      const size = s.kind === 'video' ? ` ${s.frameWidth ?? 0}x${s.frameHeight ?? 0} ${fps}fps` : '';
      const limit = s.qualityLimitationReason && s.qualityLimitationReason !== 'none' ? ` (${s.qualityLimitationReason})` : '';
      if (s.qualityLimitationReason === 'bandwidth' && own === 'good') own = 'fair';
      lines.push(`${key.padEnd(12)}${size} ${kbps} kbps${s.active === false ? ' inactive' : ''}${limit}`);
    }
    const states = [this.client.publisher, this.client.subscriber].filter(Boolean).map((pc) => pc.iceConnectionState);
    if (states.some((state) => state === 'failed' || state === 'disconnected')) own = 'poor';
    if (!outbound.length && !states.length) own = 'unknown';
    this.#previous = now;
    this.onReport({ users, own, lines });
  }

  #cameraOn(userId) {
    return this.client.participants.get(userId)?.media_state?.video !== false;
  }
}
