// What every explorer of the book shares: the default-box geometry, IoU, and SVG/HTML helpers.
// ssd_tutorial/explorer.py inlines this file, one explorer's own file and its data into one HTML
// output, so an explorer runs in Jupyter, in Colab and in the static book, offline. The formulas
// mirror ssd_tutorial/anchors.py and ssd_tutorial/boxes.py operation for operation, so that the
// numbers agree with the package's to the last bit (tests/test_explorers.py checks it).
(function () {
  if (window.ssdExplorer) return;
  const SVG = "http://www.w3.org/2000/svg";
  const HTML = "http://www.w3.org/1999/xhtml";
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
  const renderers = {};

  // Width, height (relative) and name of the boxes of one cell, in their order in the cell:
  // the listed shapes, or [s_k, s'_k, a, 1/a, ...] from the map's scale and aspect ratios.
  function cellShapes(map, imageSize, clip) {
    let shapes;
    if (map.shapes) {
      shapes = map.shapes.map(([w, h], k) => [w / imageSize, h / imageSize, `#${k + 1}`]);
    } else {
      const s = map.min_size / imageSize;
      const sPrime = Math.sqrt(map.min_size * map.max_size) / imageSize;
      shapes = [[s, s, "1"], [sPrime, sPrime, "1'"]];
      for (const a of map.ratios) {
        const r = Math.sqrt(a);
        shapes.push([s * r, s / r, String(a)], [s / r, s * r, "1/" + a]);
      }
    }
    const limit = (v) => (clip ? Math.min(Math.max(v, 0), 1) : v);
    return shapes.map(([w, h, name]) => [limit(w), limit(h), name]);
  }

  // All default boxes of one map, centre form, in the order row, column, shape.
  function mapBoxes(map, imageSize, clip) {
    const shapes = cellShapes(map, imageSize, clip);
    const spacing = map.step / imageSize;
    const boxes = [];
    for (let i = 0; i < map.size; i++) {
      for (let j = 0; j < map.size; j++) {
        for (const [w, h] of shapes) boxes.push([(j + 0.5) * spacing, (i + 0.5) * spacing, w, h]);
      }
    }
    return boxes;
  }

  function allBoxes(config) {
    return config.maps.flatMap((m) => mapBoxes(m, config.image_size, config.clip));
  }

  // The feature map of each default box of allBoxes(config).
  function mapOfBoxes(config) {
    return config.maps.flatMap((m, k) => {
      const count = m.size * m.size * cellShapes(m, config.image_size, config.clip).length;
      return new Array(count).fill(k);
    });
  }

  const corners = ([cx, cy, w, h]) => [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];

  // IoU of two corner-form boxes, in the order of operations of ssd_tutorial.boxes.
  function iou(a, b) {
    const w = Math.max(Math.min(a[2], b[2]) - Math.max(a[0], b[0]), 0);
    const h = Math.max(Math.min(a[3], b[3]) - Math.max(a[1], b[1]), 0);
    const inter = w * h;
    const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return union > 0 ? inter / union : 0; // two empty boxes: 0, as the package says
  }

  // Index of the first largest value, as torch's max and argmax give it.
  function argmax(values) {
    let best = 0;
    for (let k = 1; k < values.length; k++) if (values[k] > values[best]) best = k;
    return best;
  }

  function el(tag, attrs, parent) {
    const svg = tag === "svg" || (parent && parent.namespaceURI === SVG);
    const node = document.createElementNS(svg ? SVG : HTML, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // A corner-form relative box as an SVG rectangle on a picture of side `view` pixels.
  function rect(parent, box, view, attrs) {
    const [x1, y1, x2, y2] = box.map((v) => v * view);
    return el("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, ...attrs }, parent);
  }

  function text(parent, x, y, content, attrs) {
    const node = el("text", { x, y, ...attrs }, parent);
    node.textContent = content;
    return node;
  }

  // A labelled control: the label element wraps its input, so screen readers name it.
  function control(parent, label, input) {
    const wrap = el("label", { class: "ssd-explorer-control" }, parent);
    wrap.appendChild(document.createTextNode(label + " "));
    wrap.appendChild(input);
    return input;
  }

  // A range input with its value shown beside it.
  function slider(parent, label, role, min, max, step, value) {
    const input = control(parent, label, el("input", { type: "range", min, max, step, value, "data-role": role }));
    const readout = el("output", { class: "ssd-readout" }, input.parentNode);
    const show = () => { readout.textContent = input.value; };
    input.addEventListener("input", show);
    show();
    // a value set by the script (a new map, a reset) shows too
    const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value");
    Object.defineProperty(input, "value", { get: () => setter.get.call(input), set: (v) => { setter.set.call(input, v); show(); } });
    return input;
  }

  function select(parent, label, role, options) {
    const node = el("select", { "data-role": role });
    for (const [value, name] of options) el("option", { value }, node).textContent = name;
    return control(parent, label, node);
  }

  function button(parent, label, role) {
    const node = el("button", { type: "button", "data-role": role }, parent);
    node.textContent = label;
    return node;
  }

  // The parts every explorer has: a row of controls, the picture, a side panel and a status
  // line that says in words what the picture shows (announced to screen readers).
  function layout(root, view) {
    root.classList.add("ssd-explorer");
    const controls = el("div", { class: "ssd-explorer-controls" }, root);
    const status = el("div", { class: "ssd-status", "data-role": "status", role: "status", "aria-live": "polite" }, root);
    const body = el("div", { class: "ssd-explorer-body" }, root);
    const svg = el("svg", { width: view, height: view, viewBox: `0 0 ${view} ${view}`, class: "ssd-explorer-canvas" }, body);
    const side = el("div", { class: "ssd-explorer-side" }, body);
    return { controls, status, svg, side };
  }

  // The photo under the boxes, squashed to the square network input as SSD sees it.
  function photo(svg, href, view) {
    if (href) el("image", { href, x: 0, y: 0, width: view, height: view, preserveAspectRatio: "none", opacity: 0.85 }, svg);
  }

  // The grid of one feature map over the picture (left out when its lines would be a blur).
  function grid(svg, map, imageSize, view) {
    const cell = (view * map.step) / imageSize;
    if (map.size > 40) return cell;
    for (let k = 1; k < map.size; k++) {
      el("line", { x1: k * cell, y1: 0, x2: k * cell, y2: view, class: "ssd-grid" }, svg);
      el("line", { x1: 0, y1: k * cell, x2: view, y2: k * cell, class: "ssd-grid" }, svg);
    }
    return cell;
  }

  // A table from a header row and body rows of cell texts; `current` marks one body row.
  function table(parent, header, rows, current) {
    const node = el("table", { class: "ssd-counts" }, parent);
    const head = el("tr", {}, node);
    for (const h of header) el("th", {}, head).textContent = h;
    rows.forEach((cells, k) => {
      const row = el("tr", k === current ? { class: "ssd-current" } : {}, node);
      for (const c of cells) el("td", {}, row).textContent = c;
    });
    return node;
  }

  // An x-y plot of `width` x `height` pixels with labelled axes over [x0, x1] x [y0, y1]. Returns
  // its SVG element and the maps from data to pixel coordinates.
  function plot(parent, width, height, [x0, x1], [y0, y1], xLabel, yLabel) {
    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "ssd-plot" }, parent);
    const [left, right, top, bottom] = [42, 10, 10, 34];
    const x = (v) => left + ((v - x0) / (x1 - x0)) * (width - left - right);
    const y = (v) => height - bottom - ((v - y0) / (y1 - y0)) * (height - top - bottom);
    el("line", { x1: x(x0), y1: y(y0), x2: x(x1), y2: y(y0), class: "ssd-axis" }, svg);
    el("line", { x1: x(x0), y1: y(y0), x2: x(x0), y2: y(y1), class: "ssd-axis" }, svg);
    for (const v of [x0, (x0 + x1) / 2, x1]) text(svg, x(v), height - bottom + 13, +v.toFixed(2), { class: "ssd-axis-label", "text-anchor": "middle" });
    for (const v of [y0, (y0 + y1) / 2, y1]) text(svg, left - 4, y(v) + 4, +v.toFixed(2), { class: "ssd-axis-label", "text-anchor": "end" });
    text(svg, (left + width - right) / 2, height - 4, xLabel, { class: "ssd-axis-label", "text-anchor": "middle" });
    text(svg, 11, (top + height - bottom) / 2, yLabel, { class: "ssd-axis-label", "text-anchor": "middle", transform: `rotate(-90 11 ${(top + height - bottom) / 2})` });
    return { svg, x, y };
  }

  // A polyline through [x, y] data points of a plot.
  function line(p, points, attrs) {
    return el("polyline", { points: points.map(([a, b]) => `${p.x(a)},${p.y(b)}`).join(" "), fill: "none", ...attrs }, p.svg);
  }

  // Back, forward and to-the-end buttons and a step slider over 0..count, calling show(step).
  function stepper(parent, show) {
    const back = button(parent, "\u25c0 back", "back");
    const forward = button(parent, "step \u25b6", "forward");
    const end = button(parent, "to the end", "end");
    const input = slider(parent, "step", "step", 0, 1, 1, 0);
    const stepper = { step: 0, count: 0 };
    const go = (step) => { stepper.step = Math.min(Math.max(step, 0), stepper.count); input.value = stepper.step; show(stepper.step); };
    back.addEventListener("click", () => go(stepper.step - 1));
    forward.addEventListener("click", () => go(stepper.step + 1));
    end.addEventListener("click", () => go(stepper.count));
    input.addEventListener("input", () => go(Number(input.value)));
    // a new sequence (another class or threshold) of `count` steps, shown at `step`
    stepper.reset = (count, step) => { stepper.count = count; input.max = count; go(step); };
    return stepper;
  }

  // The pointer position on the picture, relative to it in [0, 1].
  function pointer(svg, event) {
    const r = svg.getBoundingClientRect();
    const clamp = (v) => Math.min(Math.max(v, 0), 1);
    return [clamp((event.clientX - r.left) / r.width), clamp((event.clientY - r.top) / r.height)];
  }

  const copy = (value) => JSON.parse(JSON.stringify(value));

  function register(name, render) {
    renderers[name] = render;
  }

  function render(root, data) {
    renderers[data.explorer](root, data);
  }

  window.ssdExplorer = {
    COLORS, cellShapes, mapBoxes, allBoxes, mapOfBoxes, corners, iou, argmax,
    el, rect, text, control, slider, select, button, layout, photo, grid, table, plot, line, stepper,
    pointer, copy,
    register, render,
  };
})();
