/** Connection details for the curious and for support: the simulcast layer to receive and the
 * raw statistics of every stream sent and received. */
import { field, h } from '../dom.js';

export class DebugPanel {
  constructor(client) {
    const layer = h(
      'select',
      { id: 'layer' },
      ['low', 'medium', 'high'].map((value) => h('option', { value, selected: value === 'high' }, value)),
    );
    layer.onchange = () => client.setLayer(layer.value);
    this.stats = h('pre', { id: 'stats', className: 'stats', tabIndex: 0, 'aria-label': 'Media statistics' });
    this.element = h(
      'section',
      { className: 'panel-body', 'aria-label': 'Connection details' },
      field('Best video quality to receive', layer),
      this.stats,
    );
  }

  show(lines) {
    this.stats.textContent = lines.join('\n');
  }
}
