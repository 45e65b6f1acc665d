// The matching explorer (chapter 5): draw or pick a ground-truth box and see the IoU of every
// default box of a feature map, the best default box that step 1 forces, and the positives that
// step 2 adds at a threshold. The two steps mirror ssd_tutorial/matching.py.
(function () {
  const X = window.ssdExplorer;

  // Two-step matching of one image. objects: corner-form boxes; priors: corner-form default
  // boxes. Returns the IoU rows [object][prior], each object's forced default box, and for each
  // default box the index of its object or -1 (background).
  function match(objects, priors, threshold) {
    const iou = objects.map((o) => priors.map((p) => X.iou(o, p)));
    const objectIndex = priors.map((_, p) => {
      const best = X.argmax(iou.map((row) => row[p]));
      return objects.length && iou[best][p] >= threshold ? best : -1;
    });
    // step 1 overrides step 2; an object later in the list wins a shared default box
    const forced = iou.map((row) => X.argmax(row));
    forced.forEach((p, g) => { objectIndex[p] = g; });
    return { iou, forced, objectIndex };
  }

  function render(root, data) {
    const view = data.view;
    const config = data.config;
    const priors = X.allBoxes(config).map(X.corners);
    const mapOf = X.mapOfBoxes(config);
    const state = { objects: X.copy(data.ground_truth), selected: 0, mapIndex: 0, threshold: data.threshold };
    const { controls, status, svg, side } = X.layout(root, view);

    const objectSelect = X.select(controls, "object", "object", []);
    const maps = config.maps.map((m, k) => [k, `${m.size}x${m.size} (${m.source})`]);
    const mapSelect = X.select(controls, "feature map", "map", maps);
    const thresholdInput = X.slider(controls, "threshold IoU \u2265", "threshold", 0.1, 0.9, 0.05, state.threshold);
    const sides = ["box-x", "box-y", "box-w", "box-h"].map((role, k) =>
      X.slider(controls, ["centre x", "centre y", "width", "height"][k], role, 0, 1, 0.005, 0));
    const tiny = X.button(controls, "tiny box", "tiny");
    const reset = X.button(controls, "reset", "reset");
    let result;

    function fillObjects() {
      objectSelect.innerHTML = "";
      state.objects.forEach((o, k) => { X.el("option", { value: k }, objectSelect).textContent = `${k}: ${o.name}`; });
      objectSelect.value = state.selected;
    }

    // the sliders show the selected box in centre form
    function syncBox() {
      const [x1, y1, x2, y2] = state.objects[state.selected].box;
      [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1].forEach((v, k) => { sides[k].value = v; });
    }

    function setBox(box) {
      const [x1, y1, x2, y2] = box.map((v) => Math.min(Math.max(v, 0), 1));
      if (x2 - x1 <= 0 || y2 - y1 <= 0) return;
      state.objects[state.selected].box = [x1, y1, x2, y2];
      update();
    }

    function update() {
      result = match(state.objects.map((o) => o.box), priors, state.threshold);
      draw();
    }

    function draw() {
      const m = config.maps[state.mapIndex];
      const g = state.selected;
      const row = result.iou[g];
      svg.innerHTML = "";
      X.photo(svg, data.image, view);
      // heat map: the best IoU of each cell's default boxes with the selected object
      const cell = (view * m.step) / config.image_size;
      const first = mapOf.indexOf(state.mapIndex);
      const perCell = X.cellShapes(m, config.image_size, config.clip).length;
      for (let c = 0; c < m.size * m.size; c++) {
        const best = Math.max(...row.slice(first + c * perCell, first + (c + 1) * perCell));
        if (best > 0) {
          X.el("rect", { x: (c % m.size) * cell, y: Math.floor(c / m.size) * cell, width: cell, height: cell, class: "ssd-heat", "fill-opacity": (0.75 * best).toFixed(3) }, svg);
        }
      }
      X.grid(svg, m, config.image_size, view);
      priors.forEach((p, k) => {
        if (mapOf[k] === state.mapIndex && result.objectIndex[k] === g) X.rect(svg, p, view, { class: "ssd-positive" });
      });
      state.objects.forEach((o, k) => X.rect(svg, o.box, view, { class: k === g ? "ssd-selected" : "ssd-truth" }));
      const forced = result.forced[g];
      X.rect(svg, priors[forced], view, { class: "ssd-forced" });

      // per map: best IoU and positives of the selected object, positives of all objects
      side.innerHTML = "";
      const counts = config.maps.map(() => [0, 0, 0]);
      priors.forEach((_, k) => {
        const c = counts[mapOf[k]];
        c[0] = Math.max(c[0], row[k]);
        if (result.objectIndex[k] === g) c[1] += 1;
        if (result.objectIndex[k] >= 0) c[2] += 1;
      });
      const rows = config.maps.map((mm, k) => [`${mm.size}x${mm.size}`, mm.source, counts[k][0].toFixed(3), counts[k][1], counts[k][2]]);
      const table = X.table(side, ["map", "source", "best IoU", "positives", "all objects"], rows, state.mapIndex);
      const foot = X.el("tr", { class: "ssd-total" }, table);
      const total = (i) => counts.reduce((sum, c) => sum + c[i], 0);
      for (const [role, value] of [["", "total"], ["", ""], ["", ""], ["positives", total(1)], ["all-positives", total(2)]]) {
        X.el("td", role ? { "data-role": role } : {}, foot).textContent = value;
      }
      const here = counts[state.mapIndex][1];
      const owner = result.objectIndex[forced] === g ? "" : ` (taken by object ${result.objectIndex[forced]})`;
      status.textContent = `${here} positive${here === 1 ? "" : "s"} on ${m.source} for ${g}: ${state.objects[g].name}, ` +
        `best IoU there ${counts[state.mapIndex][0].toFixed(2)}; its forced best default box (red) has IoU ` +
        `${row[forced].toFixed(3)} on ${config.maps[mapOf[forced]].source}${owner}; ${total(1)} positives in all ` +
        `at IoU \u2265 ${state.threshold.toFixed(2)}`;
    }

    objectSelect.addEventListener("change", () => { state.selected = Number(objectSelect.value); syncBox(); draw(); });
    mapSelect.addEventListener("change", () => { state.mapIndex = Number(mapSelect.value); draw(); });
    thresholdInput.addEventListener("input", () => { state.threshold = Number(thresholdInput.value); update(); });
    sides.forEach((input) => input.addEventListener("input", () => {
      const [cx, cy, w, h] = sides.map((s) => Number(s.value));
      setBox([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]);
    }));
    tiny.addEventListener("click", () => {
      // a box far smaller than the smallest default box, at the selected object's centre
      const [x1, y1, x2, y2] = state.objects[state.selected].box;
      const [cx, cy, s] = [(x1 + x2) / 2, (y1 + y2) / 2, 0.006];
      setBox([cx - s, cy - s, cx + s, cy + s]);
      syncBox();
    });
    reset.addEventListener("click", () => {
      state.objects = X.copy(data.ground_truth);
      syncBox();
      update();
    });
    // drag over the picture to draw a new box for the selected object
    let start = null;
    svg.addEventListener("pointerdown", (event) => { start = X.pointer(svg, event); });
    svg.addEventListener("pointerup", (event) => {
      if (!start) return;
      const end = X.pointer(svg, event);
      const box = [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])];
      start = null;
      setBox(box);
      syncBox();
    });

    fillObjects();
    syncBox();
    update();
  }

  X.register("matching", render);
  X.match = match;
})();
