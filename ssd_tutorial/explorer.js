// The anchor explorer: SSD's default boxes drawn over an image, in plain JavaScript and SVG.
// ssd_tutorial/explorer.py inlines this file and the data into one HTML output, so the same
// explorer runs in Jupyter, in Colab and in the static book with no kernel and no network.
// The box formulas mirror ssd_tutorial/anchors.py; tests/test_browser.py checks that they agree.
(function () {
  if (window.ssdAnchorExplorer) return;
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

  // Width and height (relative) of the boxes of one cell: [s_k, s'_k, a, 1/a, ...].
  function cellShapes(map, imageSize, clip) {
    const s = map.min_size / imageSize;
    const sPrime = Math.sqrt(map.min_size * map.max_size) / imageSize;
    const shapes = [[s, s, "1"], [sPrime, sPrime, "1'"]];
    for (const a of map.ratios) {
      const r = Math.sqrt(a);
      shapes.push([s * r, s / r, String(a)], [s / r, s * r, "1/" + a]);
    }
    const limit = (v) => (clip ? Math.min(Math.max(v, 0), 1) : v);
    return shapes.map(([w, h, name]) => [limit(w), limit(h), name]);
  }

  // All default boxes of one map, centre form, in the order row, column, shape.
  function mapBoxes(map, imageSize, clip) {
    const shapes = cellShapes(map, imageSize, clip);
    const boxes = [];
    for (let i = 0; i < map.size; i++) {
      for (let j = 0; j < map.size; j++) {
        const cx = ((j + 0.5) * map.step) / imageSize;
        const cy = ((i + 0.5) * map.step) / imageSize;
        for (const [w, h] of shapes) boxes.push([cx, cy, w, h]);
      }
    }
    return boxes;
  }

  function allBoxes(config) {
    return config.maps.flatMap((m) => mapBoxes(m, config.image_size, config.clip));
  }

  function iou(a, b) {
    const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
    const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    if (w <= 0 || h <= 0) return 0;
    const inter = w * h;
    const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return inter / union;
  }

  const corners = ([cx, cy, w, h]) => [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];

  function el(tag, attrs, parent) {
    const node = document.createElementNS(tag === "svg" || parent instanceof SVGElement ? SVG : "http://www.w3.org/1999/xhtml", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function control(parent, label, input) {
    const wrap = el("label", { class: "ssd-explorer-control" }, parent);
    wrap.appendChild(document.createTextNode(label + " "));
    wrap.appendChild(input);
    return wrap;
  }

  function render(root, data) {
    const state = {
      configName: data.initial,
      configs: JSON.parse(JSON.stringify(data.configs)), // editable copies
      mapIndex: 0,
      row: 0,
      col: 0,
      threshold: 0.5,
    };
    const view = data.view;
    root.classList.add("ssd-explorer");
    const controls = el("div", { class: "ssd-explorer-controls" }, root);
    const body = el("div", { class: "ssd-explorer-body" }, root);
    const svg = el("svg", { width: view, height: view, viewBox: `0 0 ${view} ${view}`, class: "ssd-explorer-canvas" }, body);
    const side = el("div", { class: "ssd-explorer-side" }, body);

    const configSelect = el("select", { "data-role": "config" });
    for (const name of Object.keys(data.configs)) el("option", { value: name }, configSelect).textContent = name;
    configSelect.value = state.configName;
    const mapSelect = el("select", { "data-role": "map" });
    const rowInput = el("input", { type: "range", min: 0, value: 0, "data-role": "row" });
    const colInput = el("input", { type: "range", min: 0, value: 0, "data-role": "col" });
    const scaleInput = el("input", { type: "range", min: 0.02, max: 1, step: 0.01, "data-role": "scale" });
    const ratio2 = el("input", { type: "checkbox", "data-role": "ratio-2" });
    const ratio3 = el("input", { type: "checkbox", "data-role": "ratio-3" });
    const iouInput = el("input", { type: "range", min: 0.1, max: 0.9, step: 0.05, value: 0.5, "data-role": "iou" });
    const reset = el("button", { type: "button", "data-role": "reset" });
    reset.textContent = "reset";
    control(controls, "config", configSelect);
    control(controls, "feature map", mapSelect);
    control(controls, "row", rowInput);
    control(controls, "column", colInput);
    control(controls, "scale s_k", scaleInput);
    control(controls, "ratios 2, 1/2", ratio2);
    control(controls, "3, 1/3", ratio3);
    control(controls, "match IoU >", iouInput);
    controls.appendChild(reset);

    const config = () => state.configs[state.configName];
    const map = () => config().maps[state.mapIndex];

    function fillMaps() {
      mapSelect.innerHTML = "";
      config().maps.forEach((m, k) => {
        el("option", { value: k }, mapSelect).textContent = `${m.size}x${m.size} (${m.source})`;
      });
      mapSelect.value = state.mapIndex;
    }

    function syncInputs() {
      const m = map();
      rowInput.max = colInput.max = m.size - 1;
      state.row = Math.min(state.row, m.size - 1);
      state.col = Math.min(state.col, m.size - 1);
      rowInput.value = state.row;
      colInput.value = state.col;
      scaleInput.value = m.min_size / config().image_size;
      ratio2.checked = m.ratios.includes(2);
      ratio3.checked = m.ratios.includes(3);
    }

    function draw() {
      const cfg = config();
      const m = map();
      svg.innerHTML = "";
      const px = (v) => v * view;
      if (data.image) el("image", { href: data.image, x: 0, y: 0, width: view, height: view, preserveAspectRatio: "none", opacity: 0.85 }, svg);
      // the grid of the chosen feature map, and its chosen cell
      const cell = (view * m.step) / cfg.image_size;
      if (m.size <= 40) {
        for (let k = 1; k < m.size; k++) {
          el("line", { x1: k * cell, y1: 0, x2: k * cell, y2: view, class: "ssd-grid" }, svg);
          el("line", { x1: 0, y1: k * cell, x2: view, y2: k * cell, class: "ssd-grid" }, svg);
        }
      }
      el("rect", { x: state.col * cell, y: state.row * cell, width: cell, height: cell, class: "ssd-cell" }, svg);

      // ground truth and the default boxes of this map that match it
      const boxes = mapBoxes(m, cfg.image_size, cfg.clip).map(corners);
      const matched = new Set();
      for (const gt of data.ground_truth) {
        boxes.forEach((b, k) => { if (iou(b, gt.box) > state.threshold) matched.add(k); });
      }
      for (const k of matched) {
        const b = boxes[k];
        el("rect", { x: px(b[0]), y: px(b[1]), width: px(b[2] - b[0]), height: px(b[3] - b[1]), class: "ssd-matched" }, svg);
      }
      for (const gt of data.ground_truth) {
        const b = gt.box;
        el("rect", { x: px(b[0]), y: px(b[1]), width: px(b[2] - b[0]), height: px(b[3] - b[1]), class: "ssd-truth" }, svg);
      }

      // the default boxes of the chosen cell
      const shapes = cellShapes(m, cfg.image_size, cfg.clip);
      const first = (state.row * m.size + state.col) * shapes.length;
      shapes.forEach(([, , name], k) => {
        const b = boxes[first + k];
        el("rect", { x: px(b[0]), y: px(b[1]), width: px(b[2] - b[0]), height: px(b[3] - b[1]), class: "default-box", stroke: COLORS[k % COLORS.length], "data-shape": name }, svg);
      });

      // the side panel: legend of the cell's boxes and the counts per map
      side.innerHTML = "";
      const status = el("div", { class: "ssd-status", "data-role": "status" }, side);
      status.textContent = `${cfg.image_size} px input, map ${m.size}x${m.size}, cell (${state.row}, ${state.col}), ` +
        `s_k = ${(m.min_size / cfg.image_size).toFixed(2)}, match IoU > ${state.threshold.toFixed(2)}`;
      const legend = el("div", { class: "ssd-legend" }, side);
      shapes.forEach(([w, h, name], k) => {
        const item = el("div", {}, legend);
        item.innerHTML = `<span style="color:${COLORS[k % COLORS.length]}">&#9632;</span> ratio ${name}: ${(w * cfg.image_size).toFixed(0)} x ${(h * cfg.image_size).toFixed(0)} px`;
      });
      const table = el("table", { class: "ssd-counts" }, side);
      table.innerHTML = "<tr><th>map</th><th>boxes/cell</th><th>boxes</th><th>matched</th></tr>";
      let total = 0;
      let totalMatched = 0;
      cfg.maps.forEach((mm, k) => {
        const mb = mapBoxes(mm, cfg.image_size, cfg.clip).map(corners);
        const per = 2 + 2 * mm.ratios.length;
        const count = mm.size * mm.size * per;
        const hits = mb.filter((b) => data.ground_truth.some((gt) => iou(b, gt.box) > state.threshold)).length;
        total += count;
        totalMatched += hits;
        const row = el("tr", k === state.mapIndex ? { class: "ssd-current" } : {}, table);
        row.innerHTML = `<td>${mm.size}x${mm.size}</td><td>${per}</td><td>${count}</td><td>${hits}</td>`;
      });
      const foot = el("tr", { class: "ssd-total" }, table);
      foot.innerHTML = `<td>total</td><td></td><td data-role="total">${total}</td><td data-role="matched">${totalMatched}</td>`;
    }

    function update() {
      syncInputs();
      draw();
    }

    // a new map starts at its centre cell, where the boxes are easiest to see
    const centreCell = () => { state.row = state.col = Math.floor(map().size / 2); };
    configSelect.addEventListener("change", () => {
      state.configName = configSelect.value;
      state.mapIndex = 0;
      fillMaps();
      centreCell();
      update();
    });
    mapSelect.addEventListener("change", () => { state.mapIndex = Number(mapSelect.value); centreCell(); update(); });
    rowInput.addEventListener("input", () => { state.row = Number(rowInput.value); draw(); });
    colInput.addEventListener("input", () => { state.col = Number(colInput.value); draw(); });
    scaleInput.addEventListener("input", () => { map().min_size = Number(scaleInput.value) * config().image_size; draw(); });
    const setRatio = (a, on) => {
      const rest = map().ratios.filter((r) => r !== a);
      map().ratios = on ? [...rest, a].sort() : rest;
      draw();
    };
    ratio2.addEventListener("change", () => setRatio(2, ratio2.checked));
    ratio3.addEventListener("change", () => setRatio(3, ratio3.checked));
    iouInput.addEventListener("input", () => { state.threshold = Number(iouInput.value); draw(); });
    reset.addEventListener("click", () => {
      state.configs[state.configName] = JSON.parse(JSON.stringify(data.configs[state.configName]));
      update();
    });
    svg.addEventListener("click", (event) => {
      const rect = svg.getBoundingClientRect();
      const cell = (rect.width * map().step) / config().image_size;
      state.col = Math.min(map().size - 1, Math.floor((event.clientX - rect.left) / cell));
      state.row = Math.min(map().size - 1, Math.floor((event.clientY - rect.top) / cell));
      update();
    });

    fillMaps();
    centreCell();
    update();
  }

  window.ssdAnchorExplorer = { render, allBoxes, cellShapes, mapBoxes, iou };
})();
