// DenoisingPlayer: watch every round of block diffusion, token by token.
//
// One ES module serves two hosts: the notebook widget (anywidget calls the default export once per
// widget, then initialize({model}) once and render({model, el}) per view), and the self-contained
// HTML export (player_html.py inlines this file and calls player() with staticModel(...)).
//
// Token text is data: it is only ever inserted with textContent (or as an attribute value), never
// parsed as markup, so a token that spells an HTML tag shows as its characters and runs nothing.
//
// Data (DenoisingTrace.to_payload): {trace_id, meta, vocab: {id: text}, committed: {canvas: [ids]},
// rounds: [{c: canvas, s: round, n: remaining, t: temperature, ids: canvas ids, am: argmax ids,
// acc: accepted 0/1, h: entropy, pin: pinned 0/1 | null, top: [[ids]] | null, tp: [[probs]] | null}]}.
// Live mode: the kernel sends {type: "rounds", start, rounds, vocab, committed} messages as rounds
// arrive and refreshes the `_data` snapshot now and then; a view that missed messages asks for them
// with {type: "sync", have}. The animation runs here, on a timer: the kernel never waits for it.

const SPEEDS = [1, 2, 4, 8, 16, 32]; // rounds per second
const STATES = {
  noise: "still noise (renoised this round)",
  new: "accepted this round",
  kept: "accepted earlier, kept",
  pinned: "pinned (infilling)",
};

// ---- the rounds received so far, shared by every view of one widget --------------------------------
function makeStore() {
  return { traceId: null, meta: {}, vocab: new Map(), rounds: [], canvasStarts: new Map(), committed: new Map(),
           maxEntropy: 0, listeners: new Set() };
}

function notify(store) {
  for (const fn of store.listeners) fn();
}

function mergeData(store, vocab, committed, rounds, start) {
  for (const [id, text] of Object.entries(vocab || {})) store.vocab.set(Number(id), text);
  for (const [c, ids] of Object.entries(committed || {})) store.committed.set(Number(c), ids);
  for (const rd of (rounds || []).slice(store.rounds.length - start)) {
    if (!store.canvasStarts.has(rd.c)) store.canvasStarts.set(rd.c, store.rounds.length);
    for (const h of rd.h) if (h > store.maxEntropy) store.maxEntropy = h;
    store.rounds.push(rd);
  }
}

function applySnapshot(store, data) {
  if (!data || !data.meta) return;
  if (data.trace_id !== store.traceId) Object.assign(store, makeStore(), { listeners: store.listeners });
  store.traceId = data.trace_id;
  store.meta = data.meta;
  mergeData(store, data.vocab, data.committed, data.rounds, 0);
  notify(store);
}

function applyMessage(store, model, msg) {
  if (!msg || msg.type !== "rounds" || msg.trace_id !== store.traceId) return;
  if (msg.start > store.rounds.length) {
    model.send({ type: "sync", have: store.rounds.length }); // a gap: ask for what was missed
    return;
  }
  mergeData(store, msg.vocab, msg.committed, msg.rounds, msg.start);
  notify(store);
}

// ---- small DOM helpers (text only through textContent) ---------------------------------------------
function h(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function tokenLabel(store, id) {
  const text = store.vocab.get(id);
  if (text === undefined || text === null) return "#" + id;
  if (text === "") return "\u2205";
  // Whitespace and control characters get visible stand-ins (control pictures U+2400..).
  return text.replace(/\n/g, "\u23CE").replace(/\t/g, "\u21E5")
    .replace(/[\u0000-\u001f\u007f]/g,
      (ch) => String.fromCharCode(ch === "\u007f" ? 0x2421 : 0x2400 + ch.charCodeAt(0)));
}

function stateOf(rd, prev, p) {
  if (rd.pin && rd.pin[p]) return "pinned";
  if (!rd.acc[p]) return "noise";
  return prev && prev.acc[p] ? "kept" : "new";
}

// ---- one view ----------------------------------------------------------------------------------------
function mountView(store, model, el) {
  const root = h("div", "dg-player");
  const header = h("div", "dg-header");
  const title = h("span", "dg-title");
  const prompt = h("div", "dg-prompt");
  header.append(title, prompt);
  const committed = h("div", "dg-committed");
  const status = h("div", "dg-status");
  const grid = h("div", "dg-grid");
  const controls = h("div", "dg-controls");
  const play = h("button", "dg-play", "\u25B6 play");
  const back = h("button", "dg-back", "\u25C0 step");
  const fwd = h("button", "dg-fwd", "step \u25B6");
  const slider = h("input", "dg-slider");
  slider.type = "range";
  slider.min = "0";
  slider.setAttribute("aria-label", "round");
  const counter = h("span", "dg-counter");
  const speedSel = h("select", "dg-speed");
  for (const s of SPEEDS) speedSel.append(new Option(`${s} rounds/s`, String(s)));
  speedSel.value = String(SPEEDS.includes(model.get("speed")) ? model.get("speed") : 4);
  const canvasSel = h("select", "dg-canvas");
  const guessLabel = h("label", "dg-guess-label");
  const guess = h("input", "dg-guess");
  guess.type = "checkbox";
  guessLabel.append(guess, document.createTextNode(" show the model's guess (argmax)"));
  controls.append(play, back, fwd, slider, counter, speedSel, canvasSel, guessLabel);
  // Keys pressed on the controls (arrows and Home/End on the slider, arrows in a select) are theirs, not
  // JupyterLab's notebook shortcuts (Lumino skips bindings for an element that carries this attribute).
  for (const control of [play, back, fwd, slider, speedSel, canvasSel, guess]) {
    control.setAttribute("data-lm-suppress-shortcuts", "true");
  }
  const legend = h("div", "dg-legend");
  for (const [state, text] of Object.entries(STATES)) {
    const item = h("span", "dg-legend-item");
    item.append(h("span", `dg-swatch dg-${state}`), document.createTextNode(text));
    legend.append(item);
  }
  legend.append(h("span", "dg-legend-note", "darker = lower entropy (more certain)"));
  const details = h("div", "dg-details", "Hover over or click a token for its details.");
  root.append(header, committed, status, grid, controls, legend, details);
  el.append(root);

  const view = { pos: 0, playing: false, timer: null, selected: null, hover: null, cells: [],
                 shownCommitted: null, shownCanvases: -1, shownTrace: null };

  function last() {
    return store.rounds.length - 1;
  }

  function ensureCells(L) {
    if (view.cells.length === L) return;
    grid.replaceChildren();
    view.cells = [];
    grid.style.setProperty("--cols", String(L >= 128 ? 16 : 8));
    for (let p = 0; p < L; p++) {
      const cell = h("span", "dg-tok dg-noise");
      cell.dataset.pos = String(p);
      cell.addEventListener("mouseenter", () => { view.hover = p; showDetails(); });
      cell.addEventListener("mouseleave", () => { view.hover = null; showDetails(); });
      cell.addEventListener("click", () => { view.selected = view.selected === p ? null : p; draw(); });
      view.cells.push(cell);
      grid.append(cell);
    }
  }

  function drawHeader() {
    if (view.shownTrace === store.traceId) return;
    view.shownTrace = store.traceId;
    view.shownCommitted = null;
    title.textContent = store.meta.title ? `DiffusionGemma \u00B7 ${store.meta.title}` : "DiffusionGemma";
    prompt.replaceChildren(h("span", "dg-label", "prompt"));
    const ids = store.meta.prompt_ids;
    if (ids && ids.length) {
      for (const id of ids) {
        const chip = h("span", "dg-chip", tokenLabel(store, id));
        chip.title = `id ${id}`;
        prompt.append(chip);
      }
    } else if (store.meta.prompt) {
      prompt.append(h("span", "dg-prompt-text", store.meta.prompt));
    }
  }

  function drawCommitted(c) {
    const key = `${c}/${store.committed.size}`;
    if (view.shownCommitted === key) return;
    view.shownCommitted = key;
    committed.replaceChildren();
    const pad = store.meta.pad_token_id;
    for (let k = 0; k < c; k++) {
      const ids = store.committed.get(k);
      if (!ids) continue;
      const row = h("div", "dg-committed-canvas");
      row.append(h("span", "dg-label", `canvas ${k + 1}`));
      for (const id of ids) {
        if (id === pad) continue;
        const chip = h("span", "dg-chip", tokenLabel(store, id));
        chip.title = `id ${id}`;
        row.append(chip);
      }
      committed.append(row);
    }
  }

  function drawCanvasOptions() {
    const n = store.canvasStarts.size;
    if (view.shownCanvases === n) return;
    view.shownCanvases = n;
    canvasSel.replaceChildren();
    for (const c of store.canvasStarts.keys()) canvasSel.append(new Option(`canvas ${c + 1}`, String(c)));
  }

  function acceptedSince(pos, p) {
    const rd = store.rounds[pos];
    if (!rd.acc[p]) return null;
    let since = rd.s;
    for (let j = pos - 1; j >= 0 && store.rounds[j].c === rd.c && store.rounds[j].acc[p]; j--) {
      since = store.rounds[j].s;
    }
    return since;
  }

  function showDetails() {
    const p = view.hover !== null ? view.hover : view.selected;
    const rd = store.rounds[view.pos];
    if (p === null || !rd || p >= rd.ids.length) {
      details.replaceChildren(h("span", "dg-hint", "Hover over or click a token for its details."));
      return;
    }
    const prev = view.pos > 0 && store.rounds[view.pos - 1].c === rd.c ? store.rounds[view.pos - 1] : null;
    const state = stateOf(rd, prev, p);
    const since = acceptedSince(view.pos, p);
    const rows = [
      ["position", `${p} \u00B7 ${STATES[state]}`],
      ["token", `\u201C${tokenLabel(store, rd.ids[p])}\u201D (id ${rd.ids[p]})`],
      ["model's guess", `\u201C${tokenLabel(store, rd.am[p])}\u201D (id ${rd.am[p]})`],
      ["entropy", rd.h[p].toFixed(4)],
      ["accepted", state === "pinned" ? "pinned: never renoised" : since === null ? "not this round"
        : `since round ${since} of this canvas`],
    ];
    const table = h("div", "dg-details-table");
    for (const [k, v] of rows) table.append(h("span", "dg-key", k), h("span", "dg-value", v));
    const parts = [table];
    if (rd.top) {
      const list = h("ol", "dg-top");
      rd.top[p].forEach((id, i) => {
        const percent = (100 * rd.tp[p][i]).toFixed(1);
        list.append(h("li", null, `\u201C${tokenLabel(store, id)}\u201D (id ${id}) ${percent}%`));
      });
      parts.push(h("div", "dg-label", "top alternatives"), list);
    }
    details.replaceChildren(...parts);
  }

  function draw() {
    drawHeader();
    drawCanvasOptions();
    const n = store.rounds.length;
    slider.max = String(Math.max(n - 1, 0));
    slider.disabled = n === 0;
    if (n === 0) {
      status.textContent = "Waiting for the first denoising round\u2026";
      counter.textContent = "round 0 / 0";
      counter.dataset.index = "-1";
      return;
    }
    view.pos = Math.min(Math.max(view.pos, 0), n - 1);
    slider.value = String(view.pos);
    const rd = store.rounds[view.pos];
    const prev = view.pos > 0 && store.rounds[view.pos - 1].c === rd.c ? store.rounds[view.pos - 1] : null;
    ensureCells(rd.ids.length);
    drawCommitted(rd.c);
    canvasSel.value = String(rd.c);
    const shown = guess.checked ? rd.am : rd.ids;
    const scale = store.maxEntropy > 0 ? store.maxEntropy : 1;
    let accepted = 0;
    let fresh = 0;
    let total = 0;
    for (let p = 0; p < rd.ids.length; p++) {
      const state = stateOf(rd, prev, p);
      accepted += state === "new" || state === "kept";
      fresh += state === "new";
      total += rd.h[p];
      const cell = view.cells[p];
      cell.className = `dg-tok dg-${state}${view.selected === p ? " dg-selected" : ""}`;
      cell.textContent = tokenLabel(store, shown[p]);
      cell.style.setProperty("--conf", (1 - Math.min(rd.h[p] / scale, 1)).toFixed(3));
    }
    counter.textContent = `canvas ${rd.c + 1} \u00B7 round ${rd.s} \u00B7 ${view.pos + 1} / ${n}`;
    counter.dataset.index = String(view.pos);
    counter.dataset.canvas = String(rd.c);
    counter.dataset.round = String(rd.s);
    status.textContent = `temperature ${rd.t.toFixed(3)} \u00B7 accepted ${accepted} (${fresh} new) \u00B7 ` +
      `mean entropy ${(total / rd.ids.length).toFixed(3)}` + (store.meta.complete ? "" : " \u00B7 live");
    play.textContent = view.playing ? "\u275A\u275A pause" : "\u25B6 play";
    showDetails();
  }

  function stop() {
    view.playing = false;
    clearTimeout(view.timer);
    view.timer = null;
  }

  function tick() {
    view.timer = null;
    if (!view.playing) return;
    if (view.pos < last()) {
      view.pos += 1;
    } else if (store.meta.complete && store.rounds.length > 0) {
      stop(); // the end of a finished trace; live traces wait here for the next round
    }
    draw();
    if (view.playing) view.timer = setTimeout(tick, 1000 / Number(speedSel.value));
  }

  function start() {
    if (view.playing) return;
    if (store.meta.complete && view.pos >= last()) view.pos = 0; // replay from the start
    view.playing = true;
    draw();
    view.timer = setTimeout(tick, 1000 / Number(speedSel.value));
  }

  play.addEventListener("click", () => (view.playing ? (stop(), draw()) : start()));
  back.addEventListener("click", () => { stop(); view.pos -= 1; draw(); });
  fwd.addEventListener("click", () => { stop(); view.pos += 1; draw(); });
  slider.addEventListener("input", () => { stop(); view.pos = Number(slider.value); draw(); });
  canvasSel.addEventListener("change", () => {
    stop();
    view.pos = store.canvasStarts.get(Number(canvasSel.value)) ?? view.pos;
    draw();
  });
  guess.addEventListener("change", draw);
  speedSel.addEventListener("change", () => {
    if (view.playing) { clearTimeout(view.timer); view.timer = setTimeout(tick, 1000 / Number(speedSel.value)); }
  });

  const listener = () => {
    if (view.shownTrace !== null && view.shownTrace !== store.traceId) { stop(); view.pos = 0; }
    draw();
  };
  store.listeners.add(listener);
  draw();
  if (model.get("autoplay")) start();
  return () => { stop(); store.listeners.delete(listener); };
}

// ---- hosts ---------------------------------------------------------------------------------------------
export default function player() {
  const store = makeStore();
  return {
    initialize({ model }) {
      applySnapshot(store, model.get("_data"));
      model.on("change:_data", () => applySnapshot(store, model.get("_data")));
      model.on("msg:custom", (msg) => applyMessage(store, model, msg));
      // Messages sent before this module loaded are lost: ask for whatever the snapshot lacks.
      model.send({ type: "sync", have: store.rounds.length });
    },
    render({ model, el }) {
      return mountView(store, model, el);
    },
  };
}

// A stand-in for the widget model where there is no kernel (the exported HTML page).
export function staticModel(state) {
  const handlers = new Map();
  return {
    get: (key) => state[key],
    set(key, value) {
      state[key] = value;
      for (const fn of handlers.get(`change:${key}`) || []) fn();
    },
    save_changes() {},
    on(event, fn) {
      if (!handlers.has(event)) handlers.set(event, new Set());
      handlers.get(event).add(fn);
    },
    off(event, fn) {
      handlers.get(event)?.delete(fn);
    },
    send() {}, // nothing to ask: the page holds the whole trace
  };
}
