/**
 * The stage: every tile, the user's own included, in a grid sized to fit the space (the column
 * count that gives the largest 16:9 tiles, the last row centred), or a speaker view: one tile large
 * (a shared screen first, else the active speaker) over a strip of the rest.
 * Tiles never move in the document (a moved <video> pauses); layout is classes and CSS sizes.
 */
const GAP = 8;
const RATIO = 16 / 9;
const STRIP_HEIGHT = 120;

/** The largest tile width that fits `count` 16:9 tiles into width × height, and its columns. */
export function fitGrid(count, width, height, gap = GAP) {
  let best = { columns: 1, tileWidth: 0 };
  for (let columns = 1; columns <= Math.max(1, count); columns += 1) {
    const rows = Math.ceil(count / columns);
    const byWidth = (width - (columns - 1) * gap) / columns;
    const byHeight = ((height - (rows - 1) * gap) / rows) * RATIO;
    const tileWidth = Math.floor(Math.min(byWidth, byHeight));
    if (tileWidth > best.tileWidth) best = { columns, tileWidth };
  }
  return best;
}

export class Stage {
  constructor(element) {
    this.element = element;
    this.tiles = new Map();
    this.mode = 'grid';
    this.speaker = null;
    this.observer = new ResizeObserver(() => this.layout());
    this.observer.observe(element);
  }

  add(tile) {
    this.tiles.set(tile.key, tile);
    tile.setSpeaking(tile.key === this.speaker); // a tile added after the server named the speaker
    // The user's own tile leads; screens come right after it.
    if (tile.local) this.element.prepend(tile.element);
    else this.element.append(tile.element);
    this.layout();
    return tile;
  }

  get(key) {
    return this.tiles.get(key);
  }

  remove(key) {
    this.tiles.get(key)?.remove();
    this.tiles.delete(key);
    this.layout();
  }

  setMode(mode) {
    this.mode = mode;
    this.layout();
  }

  setSpeaker(key) {
    this.speaker = key;
    if (this.mode === 'speaker' || this.#screenKey()) this.layout();
  }

  #screenKey() {
    return [...this.tiles.keys()].find((key) => key.startsWith('screen:') && !this.tiles.get(key).local) ?? null;
  }

  /** The tile shown large in speaker view. */
  mainKey() {
    const candidates = [this.#screenKey(), this.speaker];
    const found = candidates.find((key) => key && this.tiles.has(key));
    if (found) return found;
    return [...this.tiles.values()].find((tile) => !tile.local)?.key ?? [...this.tiles.keys()][0] ?? null;
  }

  layout() {
    const { clientWidth: width, clientHeight: height } = this.element;
    const tiles = [...this.tiles.values()];
    // A screen someone shares is shown large to everyone else, whatever the chosen layout.
    const speakerView = (this.mode === 'speaker' || this.#screenKey() !== null) && tiles.length > 1;
    this.element.classList.toggle('speaker-view', speakerView);
    this.element.classList.toggle('grid-view', !speakerView);
    if (!speakerView) {
      const { tileWidth } = fitGrid(tiles.length, width, height);
      this.element.style.setProperty('--tile-w', `${Math.max(120, tileWidth)}px`);
      for (const tile of tiles) tile.element.classList.remove('main');
      return;
    }
    const main = this.mainKey();
    const stripCount = tiles.length - 1;
    const stripWidth = Math.min(STRIP_HEIGHT * RATIO, (width - (stripCount - 1) * GAP) / Math.max(1, stripCount));
    this.element.style.setProperty('--strip-w', `${Math.max(96, Math.floor(stripWidth))}px`);
    this.element.style.setProperty('--strip-h', `${Math.floor(Math.max(96, Math.floor(stripWidth)) / RATIO)}px`);
    for (const tile of tiles) tile.element.classList.toggle('main', tile.key === main);
  }

  destroy() {
    this.observer.disconnect();
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
  }
}
