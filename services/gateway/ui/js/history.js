// Undo / redo per stroke: each entry is the diff one stroke made to the label map (the
// indices it changed, their values before and after), so a long session stays small.

export class History {
  constructor(limit = 100) {
    this.limit = limit;
    this.done = [];
    this.undone = [];
    this.before = null;
  }

  /** Call before a stroke changes `map`. */
  begin(map) {
    this.before = map.slice();
  }

  /** Call when the stroke ends; records it if it changed anything. Returns whether it did. */
  commit(map) {
    const before = this.before;
    this.before = null;
    if (!before) return false;
    const idx = [];
    for (let i = 0; i < map.length; i++) if (map[i] !== before[i]) idx.push(i);
    if (!idx.length) return false;
    const at = Uint32Array.from(idx);
    const old = new Uint8Array(at.length);
    const now = new Uint8Array(at.length);
    for (let j = 0; j < at.length; j++) {
      old[j] = before[at[j]];
      now[j] = map[at[j]];
    }
    this.done.push({ at, old, now });
    if (this.done.length > this.limit) this.done.shift();
    this.undone = [];
    return true;
  }

  /** Revert the last stroke in place; false when there is none. */
  undo(map) {
    return move(this.done, this.undone, map, "old");
  }

  redo(map) {
    return move(this.undone, this.done, map, "now");
  }

  get canUndo() {
    return this.done.length > 0;
  }

  get canRedo() {
    return this.undone.length > 0;
  }

  clear() {
    this.done = [];
    this.undone = [];
    this.before = null;
  }
}

/** Pop a step from `from`, write its `values` ("old" or "now") into `map`, push it on `to`. */
function move(from, to, map, values) {
  const step = from.pop();
  if (!step) return false;
  for (let j = 0; j < step.at.length; j++) map[step.at[j]] = step[values][j];
  to.push(step);
  return true;
}
