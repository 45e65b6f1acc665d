// The hard negative explorer (chapter 6): one image's negatives ranked by a model's background
// loss, the ones a neg:pos ratio mines, and the two loss terms, as ssd_tutorial/loss.py has them.
(function () {
  const X = window.ssdExplorer;

  // The mined negatives (indices, hardest first) and the loss terms for one neg:pos ratio.
  function mine(data, ratio) {
    const positives = [];
    const negatives = [];
    data.label.forEach((l, k) => (l > 0 ? positives : negatives).push(k));
    const quota = Math.min(Math.floor(positives.length * ratio), negatives.length);
    const ranked = negatives.sort((a, b) => data.background_loss[b] - data.background_loss[a] || a - b);
    const mined = ranked.slice(0, quota);
    const sum = (values) => values.reduce((s, v) => s + v, 0);
    const n = Math.max(positives.length, 1);
    const confidence = (sum(positives.map((k) => data.class_loss[k])) + sum(mined.map((k) => data.background_loss[k]))) / n;
    return { positives, ranked, mined, confidence, localization: sum(data.loc_loss) / n };
  }

  function render(root, data) {
    const view = data.view;
    const config = data.config;
    const priors = X.allBoxes(config).map(X.corners);
    const mapOf = X.mapOfBoxes(config);
    const state = { ratio: data.neg_pos_ratio, map: "all" };
    const { controls, status, svg, side } = X.layout(root, view);
    const ratioInput = X.slider(controls, "neg:pos ratio", "ratio", 0, 10, 0.5, state.ratio);
    const maps = [["all", "all maps"], ...config.maps.map((m, k) => [k, `${m.size}x${m.size} (${m.source})`])];
    const mapSelect = X.select(controls, "show boxes of", "map", maps);

    function draw() {
      const result = mine(data, state.ratio);
      const shown = (k) => state.map === "all" || mapOf[k] === Number(state.map);
      svg.innerHTML = "";
      X.photo(svg, data.image, view);
      for (const k of result.mined) if (shown(k)) X.rect(svg, priors[k], view, { class: "ssd-mined" });
      for (const k of result.positives) if (shown(k)) X.rect(svg, priors[k], view, { class: "ssd-positive" });
      for (const gt of data.ground_truth) X.rect(svg, gt.box, view, { class: "ssd-truth" });

      // the negatives' background loss by rank, and where the ratio cuts the ranking
      side.innerHTML = "";
      const losses = result.ranked.map((k) => data.background_loss[k]);
      const shownRanks = Math.min(losses.length, Math.max(100, 2 * result.mined.length));
      const p = X.plot(side, 360, 220, [0, shownRanks], [0, Math.max(losses[0] || 1, 1e-6)], "rank of the negative", "background loss");
      X.line(p, losses.slice(0, shownRanks).map((v, r) => [r, v]), { stroke: "#555", "stroke-width": 1.5 });
      X.line(p, [[result.mined.length, 0], [result.mined.length, losses[0] || 1]], { stroke: "#ff1744", "stroke-width": 1.5, class: "ssd-cut" });
      const terms = X.el("div", { class: "ssd-terms" }, side);
      for (const [role, name, value] of [["conf-loss", "L_conf / N", result.confidence], ["loc-loss", "L_loc / N", result.localization]]) {
        const line = X.el("div", {}, terms);
        line.appendChild(document.createTextNode(`${name} = `));
        X.el("span", { "data-role": role }, line).textContent = value.toFixed(4);
      }
      const cut = result.mined.length ? data.background_loss[result.mined[result.mined.length - 1]].toFixed(3) : "-";
      status.textContent = `${result.positives.length} positives (green); ratio ${state.ratio} mines ${result.mined.length} of ` +
        `${result.ranked.length} negatives (red), background loss down to ${cut}; L_conf/N = ${result.confidence.toFixed(3)}, ` +
        `L_loc/N = ${result.localization.toFixed(3)}`;
    }

    ratioInput.addEventListener("input", () => { state.ratio = Number(ratioInput.value); draw(); });
    mapSelect.addEventListener("change", () => { state.map = mapSelect.value; draw(); });
    draw();
  }

  X.register("mining", render);
  X.mine = mine;
})();
