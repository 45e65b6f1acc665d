// The NMS stepper (chapter 9): a trained model's candidate boxes of one class, and greedy
// non-maximum suppression one kept box at a time, as ssd_tutorial/postprocess.py does it.
(function () {
  const X = window.ssdExplorer;

  // Greedy NMS of boxes sorted best first: one step per kept box, with the boxes it suppresses
  // (IoU above the threshold) as [index, IoU] pairs.
  function nmsSteps(boxes, threshold) {
    let remaining = boxes.map((_, k) => k);
    const steps = [];
    while (remaining.length) {
      const [best, ...rest] = remaining;
      const overlaps = rest.map((k) => [k, X.iou(boxes[best], boxes[k])]);
      steps.push({ best, suppressed: overlaps.filter(([, o]) => o > threshold) });
      remaining = overlaps.filter(([, o]) => o <= threshold).map(([k]) => k);
    }
    return steps;
  }

  // The candidates of one class above a score threshold (a prefix: they come best first).
  function above(candidates, scoreThreshold) {
    const count = candidates.score.findIndex((s) => !(s > scoreThreshold));
    const n = count < 0 ? candidates.score.length : count;
    return { box: candidates.box.slice(0, n), score: candidates.score.slice(0, n) };
  }

  // The detections of the image: every class's kept boxes, the topK best of all classes.
  function detections(candidates, scoreThreshold, iouThreshold, topK) {
    const all = [];
    for (const [label, c] of Object.entries(candidates)) {
      const kept = above(c, scoreThreshold);
      for (const s of nmsSteps(kept.box, iouThreshold)) all.push({ label: Number(label), score: kept.score[s.best], box: kept.box[s.best] });
    }
    return all.sort((a, b) => b.score - a.score).slice(0, topK); // a stable sort: classes in order
  }

  function render(root, data) {
    const view = data.view;
    const state = { label: String(data.initial_class), score: data.conf_threshold, iou: data.nms_threshold, topK: data.top_k };
    const { controls, status, svg, side } = X.layout(root, view);
    const labels = Object.keys(data.candidates).map((c) => [c, data.class_names[c]]);
    const classSelect = X.select(controls, "class", "class", labels);
    classSelect.value = state.label;
    const scoreInput = X.slider(controls, "score >", "score", data.min_score, 0.9, 0.01, state.score);
    const iouInput = X.slider(controls, "NMS IoU >", "iou", 0.05, 0.95, 0.05, state.iou);
    const topKInput = X.control(controls, "top-k", X.el("input", { type: "number", min: 1, max: 200, value: state.topK, "data-role": "top-k", style: "width: 4em" }));
    let kept;
    let steps;

    function show(step) {
      svg.innerHTML = "";
      X.photo(svg, data.image, view);
      for (const gt of data.ground_truth) X.rect(svg, gt.box, view, { class: "ssd-truth" });
      // the boxes still in the running after `step` steps, the kept ones, the last step's work
      const done = steps.slice(0, step);
      const gone = new Set(done.flatMap((s) => [s.best, ...s.suppressed.map(([k]) => k)]));
      kept.box.forEach((b, k) => { if (!gone.has(k)) X.rect(svg, b, view, { class: "ssd-candidate" }); });
      const current = step > 0 ? steps[step - 1] : null;
      if (current) {
        for (const [k, o] of current.suppressed) {
          X.rect(svg, kept.box[k], view, { class: "ssd-suppressed" });
          X.text(svg, kept.box[k][0] * view + 2, kept.box[k][3] * view - 3, o.toFixed(2), { class: "ssd-label" });
        }
      }
      done.forEach((s) => X.rect(svg, kept.box[s.best], view, { class: s === current ? "ssd-best" : "ssd-kept" }));

      side.innerHTML = "";
      const rows = done.map((s, k) => [k + 1, kept.score[s.best].toFixed(3), s.suppressed.length]);
      X.table(side, ["kept", "score", "suppressed"], rows, step - 1);
      const found = detections(data.candidates, state.score, state.iou, 1e9);
      const final = X.el("p", { "data-role": "all-classes" }, side);
      final.textContent = `All classes: ${found.length} boxes survive NMS; top-k ${state.topK} keeps ${Math.min(found.length, state.topK)}.`;
      const name = data.class_names[state.label];
      const left = kept.box.length - gone.size;
      if (!current) {
        status.textContent = `${name}: ${kept.box.length} candidates with score > ${state.score.toFixed(2)}; step to keep the best`;
      } else {
        const ious = current.suppressed.map(([, o]) => o);
        const range = ious.length ? ` (IoU ${Math.min(...ious).toFixed(2)} to ${Math.max(...ious).toFixed(2)})` : "";
        status.textContent = `${name}, step ${step} of ${steps.length}: keeps the box of score ${kept.score[current.best].toFixed(3)} ` +
          `(yellow), suppresses ${ious.length}${range}; ${step} kept, ${left} left`;
      }
    }
    const stepper = X.stepper(controls, show);

    function update() {
      kept = above(data.candidates[state.label], state.score);
      steps = nmsSteps(kept.box, state.iou);
      stepper.reset(steps.length, Math.min(1, steps.length));
    }

    classSelect.addEventListener("change", () => { state.label = classSelect.value; update(); });
    scoreInput.addEventListener("input", () => { state.score = Number(scoreInput.value); update(); });
    iouInput.addEventListener("input", () => { state.iou = Number(iouInput.value); update(); });
    topKInput.addEventListener("input", () => { state.topK = Math.max(1, Number(topKInput.value)); show(stepper.step); });
    update();
  }

  X.register("nms", render);
  X.nmsSteps = nmsSteps;
  X.nmsDetections = detections;
})();
