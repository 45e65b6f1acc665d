// The AP builder (chapter 10): the ranked detections of one class, judged one by one as VOC does
// (ssd_tutorial/evaluate.py, matching="voc"), the precision-recall staircase they build, its
// envelope, the 11 points of VOC2007's AP and the area under the envelope.
(function () {
  const X = window.ssdExplorer;
  const OUTCOME = { tp: "true positive", fp: "false positive", duplicate: "duplicate (false positive)", ignored: "difficult (ignored)" };
  const COLOR = { tp: "#00e676", fp: "#ff1744", duplicate: "#ff9100", ignored: "#9e9e9e" };

  // VOC's judgement of the detections of class `label`, best score first: each looks only at the
  // object of its class and image that it overlaps most.
  function apCurve(detections, truth, label, threshold) {
    const ranked = detections.filter((d) => d.label === label).sort((a, b) => b.score - a.score); // stable
    const objects = truth.filter((t) => t.label === label);
    const taken = new Set();
    const outcomes = ranked.map((d) => {
      const candidates = objects.filter((t) => t.image === d.image);
      if (!candidates.length) return { detection: d, outcome: "fp" };
      const overlaps = candidates.map((t) => X.iou(d.box, t.box));
      const best = X.argmax(overlaps);
      let outcome = "fp";
      if (overlaps[best] >= threshold) {
        if (candidates[best].difficult) outcome = "ignored";
        else if (taken.has(candidates[best])) outcome = "duplicate";
        else { outcome = "tp"; taken.add(candidates[best]); }
      }
      return { detection: d, outcome, object: candidates[best], iou: overlaps[best] };
    });
    const positives = objects.filter((t) => !t.difficult).length;
    const precision = [];
    const recall = [];
    let found = 0;
    for (const o of outcomes) {
      if (o.outcome === "ignored") continue;
      if (o.outcome === "tp") found += 1;
      precision.push(found / (precision.length + 1));
      recall.push(found / positives);
    }
    const envelope = precision.slice();
    for (let k = envelope.length - 2; k >= 0; k--) envelope[k] = Math.max(envelope[k], envelope[k + 1]);
    const points = [...Array(11).keys()].map((k) => {
      const first = recall.findIndex((r) => r >= k / 10);
      return [k / 10, first < 0 ? 0 : envelope[first]];
    });
    const ap11 = points.reduce((s, [, p]) => s + p, 0) / 11;
    const area = envelope.reduce((s, p, k) => s + (recall[k] - (k ? recall[k - 1] : 0)) * p, 0);
    return { outcomes, positives, precision, recall, envelope, points, ap11, area };
  }

  function render(root, data) {
    const view = data.view;
    const labels = [...new Set(data.ground_truth.map((t) => t.label))].sort((a, b) => a - b);
    const state = { label: labels[0], threshold: data.iou_threshold };
    const { controls, status, svg, side } = X.layout(root, view);
    const classSelect = X.select(controls, "class", "class", labels.map((c) => [c, data.class_names[c]]));
    const iouInput = X.slider(controls, "IoU \u2265", "iou", 0.1, 0.95, 0.05, state.threshold);
    let curve;

    function show(step) {
      svg.innerHTML = "";
      const current = step > 0 ? curve.outcomes[step - 1] : null;
      const counted = curve.outcomes.slice(0, step).filter((o) => o.outcome !== "ignored").length;
      if (current) {
        const image = current.detection.image;
        X.photo(svg, data.images[image], view);
        for (const t of data.ground_truth) {
          if (t.image === image && t.label === state.label) X.rect(svg, t.box, view, { class: "ssd-truth", opacity: t.difficult ? 0.5 : 1 });
        }
        X.rect(svg, current.detection.box, view, { fill: "none", stroke: COLOR[current.outcome], "stroke-width": 3, class: "ssd-detection" });
      }

      side.innerHTML = "";
      const p = X.plot(side, 360, 260, [0, 1], [0, 1], "recall", "precision");
      const finished = step === curve.outcomes.length;
      if (finished && curve.recall.length) {
        const stairs = [[0, curve.envelope[0]]];
        curve.envelope.forEach((e, k) => stairs.push([curve.recall[k], e], [curve.recall[k], curve.envelope[k + 1] ?? 0]));
        X.line(p, stairs, { stroke: "#ff9100", "stroke-width": 2, class: "ssd-envelope" });
        for (const [r, e] of curve.points) X.el("rect", { x: p.x(r) - 3, y: p.y(e) - 3, width: 6, height: 6, fill: "#000", class: "ssd-point" }, p.svg);
      }
      const sofar = curve.recall.slice(0, counted).map((r, k) => [r, curve.precision[k]]);
      X.line(p, sofar, { stroke: "#1f77b4", "stroke-width": 1.5, class: "ssd-staircase" });
      for (const [r, pr] of sofar.slice(-1)) X.el("circle", { cx: p.x(r), cy: p.y(pr), r: 4, fill: "#1f77b4" }, p.svg);
      const result = X.el("div", { "data-role": "ap" }, side);
      result.textContent = finished
        ? `AP (11-point, VOC2007) ${curve.ap11.toFixed(4)}; area under the envelope ${curve.area.toFixed(4)}`
        : `${curve.outcomes.length - step} detections to go`;

      const name = data.class_names[state.label];
      if (!current) {
        status.textContent = `${name}: ${curve.outcomes.length} detections for ${curve.positives} objects at IoU \u2265 ${state.threshold.toFixed(2)}; step through them, best score first`;
      } else {
        const k = Math.max(counted - 1, 0);
        const pr = counted ? `precision ${curve.precision[k].toFixed(2)}, recall ${curve.recall[k].toFixed(2)}` : "nothing counted yet";
        const overlap = current.object ? `, IoU ${current.iou.toFixed(2)} with its best object` : ", no object of its class in the image";
        status.textContent = `${name}, detection ${step} of ${curve.outcomes.length} (score ${current.detection.score.toFixed(3)}, image ${current.detection.image}): ` +
          `${OUTCOME[current.outcome]}${overlap}; ${pr}` + (finished ? `; AP ${curve.ap11.toFixed(3)}` : "");
      }
    }
    const stepper = X.stepper(controls, show);

    function update() {
      curve = apCurve(data.detections, data.ground_truth, state.label, state.threshold);
      stepper.reset(curve.outcomes.length, Math.min(stepper.step, curve.outcomes.length) || 1);
    }

    classSelect.addEventListener("change", () => { state.label = Number(classSelect.value); stepper.step = 1; update(); });
    iouInput.addEventListener("input", () => { state.threshold = Number(iouInput.value); update(); });
    update();
  }

  X.register("ap", render);
  X.apCurve = apCurve;
})();
