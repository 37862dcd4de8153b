/** Changing microphone or camera during the meeting: the new device replaces the old one on the
 * same sender, so nobody else sees a renegotiation. */
import { describeError } from '../api.js';
import { field, h } from '../dom.js';
import { listDevices, openDevices } from './devices.js';

export class DeviceSettings {
  constructor(client) {
    this.client = client;
    this.error = h('p', { className: 'form-error', role: 'alert' });
    this.body = h('div');
    this.element = h('section', { className: 'panel-body', 'aria-label': 'Devices' }, this.body, this.error);
  }

  async render() {
    const devices = await listDevices().catch(() => ({ audioinput: [], videoinput: [] }));
    const current = (kind) => this.client.localStream?.getTracks().find((track) => track.kind === kind)?.getSettings().deviceId;
    const picker = (kind, label) => {
      const inputs = devices[kind === 'audio' ? 'audioinput' : 'videoinput'];
      const select = h(
        'select',
        { disabled: !inputs.length || !current(kind) },
        inputs.map((device, index) => h('option', { value: device.deviceId, selected: device.deviceId === current(kind) }, device.label || `${label} ${index + 1}`)),
      );
      select.onchange = async () => {
        try {
          const { stream } = await openDevices({ audio: kind === 'audio', video: kind === 'video', micId: select.value, cameraId: select.value });
          const [track] = stream.getTracks();
          if (track) await this.client.replaceTrack(track);
          this.error.textContent = '';
        } catch (error) {
          this.error.textContent = describeError(error);
        }
      };
      return field(label, select);
    };
    this.body.replaceChildren(picker('audio', 'Microphone'), picker('video', 'Camera'));
  }
}
