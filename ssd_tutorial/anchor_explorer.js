// The anchor explorer (chapter 3): the default boxes of one cell, the grid of their feature map,
// and the default boxes that overlap the photo's labelled objects, for several configurations.
(function () {
  const X = window.ssdExplorer;

  function render(root, data) {
    const state = { configName: data.initial, configs: X.copy(data.configs), mapIndex: 0, row: 0, col: 0, threshold: 0.5 };
    const view = data.view;
    const { controls, status, svg, side } = X.layout(root, view);
    const names = Object.keys(data.configs).map((n) => [n, n]);
    const configSelect = X.select(controls, "config", "config", names);
    configSelect.value = state.configName;
    const mapSelect = X.select(controls, "feature map", "map", []);
    const rowInput = X.slider(controls, "row", "row", 0, 1, 1, 0);
    const colInput = X.slider(controls, "column", "col", 0, 1, 1, 0);
    const scaleInput = X.slider(controls, "scale s_k", "scale", 0.02, 1, 0.01, 0.1);
    const ratio2 = X.control(controls, "ratios 2, 1/2", X.el("input", { type: "checkbox", "data-role": "ratio-2" }));
    const ratio3 = X.control(controls, "3, 1/3", X.el("input", { type: "checkbox", "data-role": "ratio-3" }));
    const iouInput = X.slider(controls, "match IoU >", "iou", 0.1, 0.9, 0.05, 0.5);
    const reset = X.button(controls, "reset", "reset");

    const config = () => state.configs[state.configName];
    const map = () => config().maps[state.mapIndex];

    function fillMaps() {
      mapSelect.innerHTML = "";
      config().maps.forEach((m, k) => {
        X.el("option", { value: k }, mapSelect).textContent = `${m.size}x${m.size} (${m.source})`;
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
      // explicit shapes (k-means) are not made from a scale and ratios: nothing to change
      for (const input of [scaleInput, ratio2, ratio3]) input.disabled = Boolean(m.shapes);
    }

    const matchesTruth = (box) => data.ground_truth.some((gt) => X.iou(gt.box, box) > state.threshold);

    function draw() {
      const cfg = config();
      const m = map();
      svg.innerHTML = "";
      X.photo(svg, data.image, view);
      const cell = X.grid(svg, m, cfg.image_size, view);
      X.el("rect", { x: state.col * cell, y: state.row * cell, width: cell, height: cell, class: "ssd-cell" }, svg);

      // ground truth and the default boxes of this map that match it
      const boxes = X.mapBoxes(m, cfg.image_size, cfg.clip).map(X.corners);
      for (const b of boxes) if (matchesTruth(b)) X.rect(svg, b, view, { class: "ssd-matched" });
      for (const gt of data.ground_truth) X.rect(svg, gt.box, view, { class: "ssd-truth" });

      // the default boxes of the chosen cell
      const shapes = X.cellShapes(m, cfg.image_size, cfg.clip);
      const first = (state.row * m.size + state.col) * shapes.length;
      const color = (k) => X.COLORS[k % X.COLORS.length];
      shapes.forEach(([, , name], k) => {
        X.rect(svg, boxes[first + k], view, { class: "default-box", stroke: color(k), "data-shape": name });
      });

      status.textContent = `${cfg.image_size} px input, map ${m.size}x${m.size} (${m.source}), cell (${state.row}, ${state.col}), ` +
        (m.shapes ? `${shapes.length} explicit box shapes` : `s_k = ${(m.min_size / cfg.image_size).toFixed(2)}`) +
        `, match IoU > ${state.threshold.toFixed(2)}`;

      // the side panel: legend of the cell's boxes and the counts per map
      side.innerHTML = "";
      const legend = X.el("div", { class: "ssd-legend" }, side);
      shapes.forEach(([w, h, name], k) => {
        const item = X.el("div", {}, legend);
        X.el("span", { style: `color:${color(k)}` }, item).textContent = "\u25a0 ";
        const label = m.shapes ? "shape" : "ratio";
        item.appendChild(document.createTextNode(`${label} ${name}: ${(w * cfg.image_size).toFixed(0)} x ${(h * cfg.image_size).toFixed(0)} px`));
      });
      let total = 0;
      let totalMatched = 0;
      const rows = cfg.maps.map((mm) => {
        const per = X.cellShapes(mm, cfg.image_size, cfg.clip).length;
        const count = mm.size * mm.size * per;
        const hits = X.mapBoxes(mm, cfg.image_size, cfg.clip).map(X.corners).filter(matchesTruth).length;
        total += count;
        totalMatched += hits;
        return [`${mm.size}x${mm.size}`, per, count, hits];
      });
      const counts = X.table(side, ["map", "boxes/cell", "boxes", "matched"], rows, state.mapIndex);
      const foot = X.el("tr", { class: "ssd-total" }, counts);
      for (const [role, value] of [["", "total"], ["", ""], ["total", total], ["matched", totalMatched]]) {
        X.el("td", role ? { "data-role": role } : {}, foot).textContent = value;
      }
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
      state.configs[state.configName] = X.copy(data.configs[state.configName]);
      update();
    });
    svg.addEventListener("click", (event) => {
      const [x, y] = X.pointer(svg, event);
      const cells = (config().image_size / map().step);
      state.col = Math.min(map().size - 1, Math.floor(x * cells));
      state.row = Math.min(map().size - 1, Math.floor(y * cells));
      update();
    });

    fillMaps();
    centreCell();
    update();
  }

  X.register("anchors", render);
})();
