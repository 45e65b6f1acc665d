// The live detector page (book/live_detector.md): the book's tiny SSD in the reader's browser,
// run by onnxruntime-web's WebAssembly build. Two ONNX files, both written by the package
// (ssd_tutorial/live.py): network.onnx (images -> loc, conf) runs once per image, and
// postprocess.onnx (ssd_tutorial.postprocess.detect as ONNX operators, with the score and IoU
// thresholds as inputs) runs again at every move of a slider. So the page computes no
// detection itself; its only arithmetic is ssd_tutorial.preprocess.preprocess repeated (the
// resize, the scaling to [0, 1], the normalisation), which tests/test_live.py checks in Chromium
// against the package, with the detections.
(function () {
  "use strict";

  const root = document.getElementById("ssd-live");
  // The page's files sit next to this script: the vendored runtime included, so that nothing
  // is fetched from anywhere else.
  const base = new URL("./", document.currentScript.src).href;
  const part = (role) => root.querySelector(`[data-role=${role}]`);

  // What the page has done, for the reader's console and for the browser test.
  const live = {
    input: null, // Float32Array [3 * S * S]: the normalised image fed to the network
    imageSize: null, // [height, width] of the image as given
    thresholds: null, // {score, iou}: the values fed to postprocess.onnx
    detections: [], // [{label, name, score, box: [x1, y1, x2, y2] relative}], best first
    networkMs: null, // the last network run, milliseconds
    postprocessMs: null, // the last post-processing run
    networkRuns: 0,
    postprocessRuns: 0,
    idle: () => chain, // resolves once all queued work is done
    timeNetwork: null, // (repeats) => median ms of `repeats` network runs on the current input
  };
  window.ssdLive = live;

  function say(text, isError) {
    const status = part("status");
    status.textContent = text;
    status.classList.toggle("ssd-live-error", Boolean(isError));
  }

  // onnxruntime-web runs one call at a time per session, and the reader may click or slide
  // faster than that: every piece of work waits for the one before.
  let chain = Promise.resolve();
  function enqueue(task) {
    chain = chain.then(task).catch((error) => say(`The detector failed: ${error.message}`, true));
    return chain;
  }

  async function start() {
    if (typeof ort === "undefined") {
      throw new Error("onnxruntime-web (ort.wasm.min.js) did not load");
    }
    ort.env.wasm.wasmPaths = base;
    // Threads need SharedArrayBuffer, which only cross-origin isolated pages have: a plain
    // static file server gives none, so one thread unless the server isolates the page.
    ort.env.wasm.numThreads = self.crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
    const response = await fetch(base + "live.json");
    if (!response.ok) throw new Error(`live.json: HTTP ${response.status}`);
    const config = await response.json();
    const options = { executionProviders: ["wasm"] };
    const [network, postprocess] = await Promise.all([
      ort.InferenceSession.create(base + config.network, options),
      ort.InferenceSession.create(base + config.postprocess, options),
    ]);
    const detector = makeDetector(config, network, postprocess);
    setUpControls(config, detector);
    say("Pick a sample image or upload a photo.");
  }

  function makeDetector(config, network, postprocess) {
    const size = config.imageSize;
    let outputs = null; // the network's {loc, conf} on the current image

    async function runNetwork(input) {
      const images = new ort.Tensor("float32", input, [1, 3, size, size]);
      const began = performance.now();
      const result = await network.run({ images });
      live.networkMs = performance.now() - began;
      live.networkRuns += 1;
      return result;
    }

    live.timeNetwork = async (repeats) => {
      const times = [];
      for (let i = 0; i < repeats; i += 1) {
        await runNetwork(live.input);
        times.push(live.networkMs);
      }
      times.sort((a, b) => a - b);
      return times[Math.floor(times.length / 2)];
    };

    return {
      async setImage(pixels, width, height) {
        live.input = normalise(resize(pixels, width, height, size), size, config);
        live.imageSize = [height, width];
        outputs = await runNetwork(live.input);
      },
      async detect(score, iou) {
        const scalar = (value) => new ort.Tensor("float32", Float32Array.of(value), []);
        const began = performance.now();
        const found = await postprocess.run({
          loc: outputs.loc,
          conf: outputs.conf,
          conf_threshold: scalar(score),
          nms_threshold: scalar(iou),
        });
        live.postprocessMs = performance.now() - began;
        live.postprocessRuns += 1;
        live.thresholds = { score, iou };
        // Rows past num_detections are padding (zeros).
        const count = Number(found.num_detections.data[0]);
        live.detections = Array.from({ length: count }, (_, k) => {
          const label = Number(found.labels.data[k]); // int64: a BigInt
          return {
            label,
            name: config.classNames[label],
            score: found.scores.data[k],
            box: Array.from(found.boxes.data.subarray(4 * k, 4 * k + 4)),
          };
        });
      },
      hasImage: () => outputs !== null,
    };
  }

  // The image's pixels resized to size x size, RGB planes in [0, 1]: the package's
  // torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False), one
  // axis after the other. An image of the network's size is left as it is, as preprocess does.
  function resize(rgba, width, height, size) {
    const planes = new Float32Array(3 * height * width);
    for (let i = 0; i < height * width; i += 1) {
      for (let c = 0; c < 3; c += 1) planes[c * height * width + i] = rgba[4 * i + c] / 255;
    }
    if (width === size && height === size) return planes;
    const rows = resizeWeights(height, size);
    const columns = resizeWeights(width, size);
    const out = new Float32Array(3 * size * size);
    const wide = new Float32Array(height * size); // one plane resized along x only
    for (let c = 0; c < 3; c += 1) {
      const plane = planes.subarray(c * height * width, (c + 1) * height * width);
      for (let y = 0; y < height; y += 1) {
        for (let x = 0; x < size; x += 1) wide[y * size + x] = dot(columns[x], plane, y * width, 1);
      }
      for (let y = 0; y < size; y += 1) {
        for (let x = 0; x < size; x += 1) {
          out[c * size * size + y * size + x] = dot(rows[y], wide, x, size);
        }
      }
    }
    return out;
  }

  // For each output pixel: the first input pixel and the weights of the triangle filter,
  // stretched by the scale when shrinking (the antialiasing), normalised to sum to 1.
  function resizeWeights(inSize, outSize) {
    const scale = inSize / outSize;
    const support = scale >= 1 ? scale : 1;
    const stretch = scale >= 1 ? 1 / scale : 1;
    return Array.from({ length: outSize }, (_, i) => {
      const center = scale * (i + 0.5);
      const first = Math.max(Math.trunc(center - support + 0.5), 0);
      const end = Math.min(Math.trunc(center + support + 0.5), inSize);
      const weights = [];
      for (let j = first; j < end; j += 1) {
        weights.push(Math.max(0, 1 - Math.abs((j - center + 0.5) * stretch)));
      }
      const total = weights.reduce((a, b) => a + b, 0);
      return { first, weights: weights.map((w) => (total > 0 ? w / total : w)) };
    });
  }

  function dot({ first, weights }, values, offset, stride) {
    let sum = 0;
    for (let k = 0; k < weights.length; k += 1) {
      sum += weights[k] * values[offset + (first + k) * stride];
    }
    return sum;
  }

  function normalise(planes, size, config) {
    const area = size * size;
    return planes.map((v, i) => {
      const c = Math.floor(i / area);
      return (v - config.mean[c]) / config.std[c];
    });
  }

  function setUpControls(config, detector) {
    const score = part("score");
    const iou = part("iou");
    score.value = config.scoreThreshold;
    iou.value = config.nmsThreshold;
    let shown = null; // the picture on display, at its own size

    async function redetect() {
      if (!detector.hasImage()) return;
      await detector.detect(score.valueAsNumber, iou.valueAsNumber);
      draw(config, shown, live.detections);
      report(config);
    }

    // A slider rerun waits behind the work queued; several moves in the meantime give one run.
    let rerunQueued = false;
    function onSlider() {
      part("score-value").textContent = score.valueAsNumber.toFixed(2);
      part("iou-value").textContent = iou.valueAsNumber.toFixed(2);
      if (rerunQueued) return;
      rerunQueued = true;
      enqueue(() => {
        rerunQueued = false;
        return redetect();
      });
    }
    score.addEventListener("input", onSlider);
    iou.addEventListener("input", onSlider);
    onSlider();

    function choose(bitmap) {
      return enqueue(async () => {
        say("Running the network…");
        shown = bitmap;
        const canvas = document.createElement("canvas");
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
        const context = canvas.getContext("2d");
        context.drawImage(bitmap, 0, 0);
        const pixels = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
        await detector.setImage(pixels, bitmap.width, bitmap.height);
        await redetect();
      });
    }
    live.chooseSample = async (index) => {
      const response = await fetch(base + config.samples[index]);
      return choose(await createImageBitmap(await response.blob()));
    };

    const samples = part("samples");
    config.samples.forEach((file, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.sample = String(index);
      button.title = `sample ${index + 1}`;
      const thumbnail = document.createElement("img");
      thumbnail.src = base + file;
      thumbnail.alt = `synthetic shapes, sample ${index + 1}`;
      button.append(thumbnail);
      button.addEventListener("click", () => live.chooseSample(index));
      samples.append(button);
    });
    part("upload").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (!file) return;
      try {
        // Turned as its EXIF tag says, as the reader sees it (the package reads files as stored).
        choose(await createImageBitmap(file));
      } catch (error) {
        say(`${file.name} is not an image this browser can read (${error.message})`, true);
      }
    });
  }

  // The picture at 512 px wide, each detection's box, class and score over it.
  function draw(config, bitmap, detections) {
    const canvas = part("view");
    const zoom = Math.min(4, 512 / bitmap.width); // small images enlarged, up to 4 times
    canvas.width = Math.round(bitmap.width * zoom);
    canvas.height = Math.round(bitmap.height * zoom);
    const context = canvas.getContext("2d");
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    context.lineWidth = 2;
    context.font = "13px sans-serif";
    for (const { label, name, score, box } of detections) {
      const [x1, y1, x2, y2] = [
        box[0] * canvas.width,
        box[1] * canvas.height,
        box[2] * canvas.width,
        box[3] * canvas.height,
      ];
      const color = config.colors[(label - 1) % config.colors.length];
      context.strokeStyle = color;
      context.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${name} ${score.toFixed(2)}`;
      const top = Math.max(y1 - 16, 0);
      context.fillStyle = color;
      context.fillRect(x1, top, context.measureText(text).width + 6, 16);
      context.fillStyle = "#fff";
      context.fillText(text, x1 + 3, top + 12);
    }
  }

  // The status line and the table: each detection's box in pixels of the image as given.
  function report(config) {
    const { score, iou } = live.thresholds;
    const count = live.detections.length;
    say(
      `${count} detection${count === 1 ? "" : "s"} above ${score.toFixed(2)} after NMS at ` +
        `IoU ${iou.toFixed(2)}: network ${live.networkMs.toFixed(1)} ms, ` +
        `post-processing ${live.postprocessMs.toFixed(1)} ms (this image, this browser).`
    );
    const [height, width] = live.imageSize;
    const table = part("table");
    table.replaceChildren();
    const head = table.createTHead().insertRow();
    for (const title of ["class", "score", "x1", "y1", "x2", "y2"]) {
      head.append(Object.assign(document.createElement("th"), { textContent: title }));
    }
    const body = table.createTBody();
    for (const { name, score: found, box } of live.detections) {
      const row = body.insertRow();
      const pixels = box.map((v, k) => (v * (k % 2 === 0 ? width : height)).toFixed(1));
      for (const cell of [name, found.toFixed(3), ...pixels]) row.insertCell().textContent = cell;
    }
  }

  // Opened from disk (file://), a browser refuses to fetch the model and the WebAssembly
  // runtime: the page says how to serve the book rather than stay blank.
  start().catch((error) => {
    if (location.protocol === "file:") {
      say(
        "This page cannot run from a file on disk: browsers block WebAssembly and model " +
          "files on file:// pages. Serve the built book over http instead, with " +
          "python -m http.server -d _build/html in the repository, and open " +
          "http://localhost:8000/book/live_detector.html.",
        true
      );
    } else {
      say(`The detector could not start: ${error.message}`, true);
    }
  });
})();
