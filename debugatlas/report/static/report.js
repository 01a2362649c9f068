(function () {
  "use strict";

  var source = document.getElementById("atlas-data");
  var stage = document.getElementById("atlas-stage");
  if (!source || !stage) { return; }
  var data;
  try { data = JSON.parse(source.textContent); } catch (err) { return; }
  var grids = data.grids || [];
  var classes = data.classes || [];
  if (!grids.length) { return; }

  var canvas = document.getElementById("atlas-canvas");
  var ctx = canvas.getContext("2d");
  var bg = document.getElementById("atlas-bg");
  var note = document.getElementById("atlas-note");
  var panel = document.getElementById("atlas-panel");
  var tooltip = document.getElementById("atlas-tooltip");
  var legend = document.getElementById("atlas-legend");
  var controls = document.getElementById("atlas-controls");
  var RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  var state = { grid: null, n: 1, lookup: null, maxCount: 1, mode: "image", wanted: "image", layer: null,
                hover: -1, selected: -1, imageOk: false };

  function className(k) { return k < 0 ? "other classes" : (k < classes.length ? classes[k] : "class " + k); }
  function classColour(k) {
    if (k < 0) { return "#8a939d"; }
    return "hsl(" + ((k * 137.508) % 360).toFixed(1) + ",65%," + (k % 2 ? "42%" : "58%") + ")";
  }
  function ramp(t) {
    t = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
    var lo = Math.floor(t), hi = Math.min(lo + 1, RAMP.length - 1), f = t - lo, rgb = [];
    for (var c = 0; c < 3; c++) { rgb.push(Math.round(RAMP[lo][c] + (RAMP[hi][c] - RAMP[lo][c]) * f)); }
    return "rgb(" + rgb.join(",") + ")";
  }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }
  function fmt(v) { return (v >= 0 ? "+" : "") + Number(v).toPrecision(3); }
  function pct(n, total) { return total ? (100 * n / total).toFixed(1) + " %" : "—"; }
  function cellAt(pos) { return pos < 0 ? null : (state.lookup[pos] < 0 ? null : state.grid.cells[state.lookup[pos]]); }
  function mixTotal(cell) { var s = 0; cell[3].forEach(function (m) { s += m[1]; }); return s; }

  function prepare(grid) {
    if (grid.lookup) { return; }
    var n = grid.grid_size;
    grid.lookup = new Int32Array(n * n).fill(-1);
    grid.maxCount = 1;
    grid.cells.forEach(function (c, idx) {
      grid.lookup[c[1] * n + c[0]] = idx;
      if (c[2] > grid.maxCount) { grid.maxCount = c[2]; }
    });
  }

  function buildLayer() {
    var n = state.n;
    if (state.mode === "image") { state.layer = null; return; }
    var layer = document.createElement("canvas");
    layer.width = n; layer.height = n;
    var lc = layer.getContext("2d");
    var logMax = Math.log(state.maxCount + 1);
    state.grid.cells.forEach(function (c) {
      var t = Math.log(c[2] + 1) / logMax;
      if (state.mode === "class") {
        lc.globalAlpha = 0.35 + 0.65 * Math.sqrt(t);
        lc.fillStyle = classColour(c[3].length ? c[3][0][0] : -1);
      } else {
        lc.globalAlpha = 1;
        lc.fillStyle = ramp(t);
      }
      lc.fillRect(c[0], c[1], 1, 1);
    });
    state.layer = layer;
  }

  function outline(pos, colour, width) {
    if (pos < 0) { return; }
    var n = state.n, s = canvas.width / n, i = pos % n, j = (pos - i) / n;
    var lw = Math.max(1, width * (window.devicePixelRatio || 1));
    ctx.lineWidth = lw;
    ctx.strokeStyle = "rgba(0,0,0,0.7)";
    ctx.strokeRect(i * s - lw / 2, j * s - lw / 2, s + lw, s + lw);
    ctx.strokeStyle = colour;
    ctx.strokeRect(i * s + lw / 2, j * s + lw / 2, Math.max(1, s - lw), Math.max(1, s - lw));
  }

  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (state.layer) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(state.layer, 0, 0, canvas.width, canvas.height);
    }
    (state.grid.marks || []).forEach(function (m) { outline(m[1] * state.n + m[0], "#34d17a", 2); });
    outline(state.selected, "#f5b301", 3);
    outline(state.hover, "#ffffff", 2);
  }

  function marksAt(pos) {
    var i = pos % state.n, j = (pos - i) / state.n;
    return (state.grid.marks || []).filter(function (m) { return m[0] === i && m[1] === j; })
      .map(function (m) { return m[2]; });
  }

  function addMarks(node, pos) {
    var labels = marksAt(pos);
    if (labels.length) { node.appendChild(el("div", "finding-tag", "confirmed finding: " + labels.join(", "))); }
  }

  function resize() {
    var rect = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    var w = Math.max(1, Math.round(rect.width * dpr)), h = Math.max(1, Math.round(rect.height * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    draw();
  }

  function showLegend() {
    clear(legend);
    if (state.mode === "image") { legend.hidden = true; return; }
    if (state.mode === "density") {
      legend.appendChild(el("span", "ctl-label", "sample count: 1"));
      var bar = el("span", "mix");
      bar.style.width = "160px";
      for (var t = 0; t <= 1.0001; t += 0.25) {
        var part = el("span"); part.style.flex = "1"; part.style.background = ramp(t); bar.appendChild(part);
      }
      legend.appendChild(bar);
      legend.appendChild(el("span", "ctl-label", String(state.maxCount) + " (log scale)"));
      legend.hidden = false;
      return;
    }
    var seen = {};
    state.grid.cells.forEach(function (c) { if (c[3].length) { seen[c[3][0][0]] = (seen[c[3][0][0]] || 0) + 1; } });
    var keys = Object.keys(seen).map(Number).sort(function (x, y) { return seen[y] - seen[x]; }).slice(0, 30);
    legend.appendChild(el("span", "ctl-label", "top class of the cell:"));
    keys.forEach(function (k) {
      var item = el("span"), sw = el("i", "sw");
      sw.style.background = classColour(k);
      item.appendChild(sw); item.appendChild(document.createTextNode(className(k)));
      legend.appendChild(item);
    });
    legend.hidden = false;
  }

  function press(attr, value) {
    controls.querySelectorAll("button[" + attr + "]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute(attr) === String(value)));
    });
  }

  function setMode(mode) {
    if (mode === "image" && !state.imageOk) { mode = "class"; }
    state.mode = mode;
    press("data-mode", mode);
    bg.hidden = mode !== "image";
    buildLayer(); showLegend(); draw();
  }

  function setGrid(index) {
    var grid = grids[index];
    prepare(grid);
    state.grid = grid; state.n = grid.grid_size; state.lookup = grid.lookup; state.maxCount = grid.maxCount;
    state.hover = -1; state.selected = -1;
    press("data-grid", index);
    var imageButton = controls.querySelector('button[data-mode="image"]');
    note.hidden = true;
    if (grid.icon_image) {
      state.imageOk = true;
      imageButton.disabled = false;
      bg.src = grid.icon_image;
    } else {
      state.imageOk = false;
      imageButton.disabled = true;
      bg.removeAttribute("src");
      note.textContent = "No feature icons for this grid (" + (grid.icon_image_problem || "not rendered") + "); cells are coloured instead.";
      note.hidden = false;
    }
    setMode(state.wanted);
    hideTooltip();
    showPanel(-1);
  }

  bg.addEventListener("error", function () {
    if (!bg.getAttribute("src")) { return; }
    state.imageOk = false;
    controls.querySelector('button[data-mode="image"]').disabled = true;
    note.textContent = "The icon atlas could not be loaded; cells are coloured instead.";
    note.hidden = false;
    setMode(state.wanted);
  });

  function position(pos) {
    var i = pos % state.n;
    return "(" + i + ", " + (pos - i) / state.n + ")";
  }

  function mixBar(cell) {
    var total = mixTotal(cell), bar = el("div", "mix");
    cell[3].forEach(function (m) {
      var part = el("span");
      part.style.width = (100 * m[1] / total) + "%";
      part.style.background = classColour(m[0]);
      bar.appendChild(part);
    });
    return bar;
  }

  function fillTooltip(pos) {
    clear(tooltip);
    var cell = cellAt(pos);
    if (!cell) {
      tooltip.appendChild(el("div", "tt-head", "Cell " + position(pos) + " · empty"));
      return;
    }
    tooltip.appendChild(el("div", "tt-head", "Cell " + position(pos) + " · " + cell[2] + " sample" + (cell[2] === 1 ? "" : "s")));
    addMarks(tooltip, pos);
    if (cell[3].length) {
      var total = mixTotal(cell);
      tooltip.appendChild(mixBar(cell));
      cell[3].slice(0, 3).forEach(function (m) {
        tooltip.appendChild(el("div", "", className(m[0]) + ": " + m[1] + " (" + pct(m[1], total) + ")"));
      });
    }
    if (cell[4].length) {
      tooltip.appendChild(el("div", "tt-sub", "mean attribution"));
      cell[4].slice(0, 3).forEach(function (a) {
        tooltip.appendChild(el("div", "", className(a[0]) + ": " + fmt(a[1])));
      });
    }
    tooltip.appendChild(el("div", "tt-sub", "click for exemplars"));
  }

  function placeTooltip(x, y) {
    tooltip.hidden = false;
    var w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    var left = x + 16, top = y + 16;
    if (left + w > window.innerWidth - 8) { left = x - w - 16; }
    if (top + h > window.innerHeight - 8) { top = y - h - 16; }
    tooltip.style.left = Math.max(4, left) + "px";
    tooltip.style.top = Math.max(4, top) + "px";
  }

  function hideTooltip() { tooltip.hidden = true; }

  function table(rows) {
    var t = el("table"), body = el("tbody");
    rows.forEach(function (cells) {
      var tr = el("tr");
      cells.forEach(function (c, k) {
        var td = el("td", k > 0 ? "num" : "");
        if (c instanceof Node) { td.appendChild(c); } else { td.textContent = c; }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    t.appendChild(body);
    return t;
  }

  function swatchName(k) {
    var span = el("span"), sw = el("i", "sw");
    sw.style.background = classColour(k);
    span.appendChild(sw); span.appendChild(document.createTextNode(className(k)));
    return span;
  }

  function showPanel(pos) {
    clear(panel);
    if (pos < 0) { panel.appendChild(el("p", "muted", "Click a cell to see its exemplars.")); return; }
    var cell = cellAt(pos);
    if (!cell) { panel.appendChild(el("h4", "", "Cell " + position(pos) + " is empty")); return; }
    panel.appendChild(el("h4", "", "Cell " + position(pos) + " · " + cell[2] + " sample" + (cell[2] === 1 ? "" : "s")));
    addMarks(panel, pos);
    if (cell[6]) {
      panel.appendChild(el("div", "muted", "feature icon"));
      var icon = el("img", "icon"); icon.src = cell[6]; icon.alt = "feature icon";
      panel.appendChild(icon);
    }
    panel.appendChild(el("div", "muted", "real exemplars (nearest the cell mean)"));
    if (cell[5].length) {
      var crops = el("div", "crops");
      cell[5].forEach(function (src) { var im = el("img"); im.src = src; im.alt = "exemplar"; crops.appendChild(im); });
      panel.appendChild(crops);
    } else {
      panel.appendChild(el("p", "muted", "No exemplar crops were saved for this cell."));
    }
    if (cell[3].length) {
      var total = mixTotal(cell);
      panel.appendChild(el("div", "muted", "class mix (true labels)"));
      panel.appendChild(table(cell[3].map(function (m) { return [swatchName(m[0]), String(m[1]), pct(m[1], total)]; })));
    }
    if (cell[4].length) {
      panel.appendChild(el("div", "muted", "mean attribution per class"));
      panel.appendChild(table(cell[4].map(function (a) { return [className(a[0]), fmt(a[1])]; })));
    }
  }

  function select(pos) {
    state.selected = pos;
    draw();
    showPanel(pos);
  }

  function eventPos(e) {
    var rect = canvas.getBoundingClientRect(), n = state.n;
    var i = Math.floor((e.clientX - rect.left) / rect.width * n);
    var j = Math.floor((e.clientY - rect.top) / rect.height * n);
    return (i < 0 || j < 0 || i >= n || j >= n) ? -1 : j * n + i;
  }

  var pending = null, frame = 0;
  function onFrame() {
    frame = 0;
    var e = pending, pos = eventPos(e);
    if (pos !== state.hover) {
      state.hover = pos;
      draw();
      if (pos < 0) { hideTooltip(); return; }
      fillTooltip(pos);
    }
    if (pos >= 0) { placeTooltip(e.clientX, e.clientY); }
  }
  canvas.addEventListener("mousemove", function (e) {
    pending = e;
    if (!frame) { frame = window.requestAnimationFrame(onFrame); }
  });
  canvas.addEventListener("mouseleave", function () {
    if (frame) { window.cancelAnimationFrame(frame); frame = 0; }
    state.hover = -1; hideTooltip(); draw();
  });
  canvas.addEventListener("click", function (e) { select(eventPos(e)); });
  canvas.addEventListener("keydown", function (e) {
    var moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (!moves[e.key]) { return; }
    e.preventDefault();
    var n = state.n, pos = state.selected;
    if (pos < 0) { pos = state.grid.cells.length ? state.grid.cells[0][1] * n + state.grid.cells[0][0] : 0; }
    else {
      var i = Math.min(n - 1, Math.max(0, pos % n + moves[e.key][0]));
      var j = Math.min(n - 1, Math.max(0, Math.floor(pos / n) + moves[e.key][1]));
      pos = j * n + i;
    }
    select(pos);
  });
  controls.addEventListener("click", function (e) {
    var button = e.target.closest("button");
    if (!button || button.disabled) { return; }
    if (button.hasAttribute("data-grid")) { setGrid(Number(button.getAttribute("data-grid"))); }
    if (button.hasAttribute("data-mode")) {
      state.wanted = button.getAttribute("data-mode");
      setMode(state.wanted);
    }
  });

  if (window.ResizeObserver) { new ResizeObserver(resize).observe(stage); }
  else { window.addEventListener("resize", resize); }
  setGrid(Math.min(Math.max(0, data.initial || 0), grids.length - 1));
  resize();
})();
