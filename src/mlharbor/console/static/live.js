// A stream processor's live view: the latest analysed frame, pushed as server-sent events (through
// live-worker.js, which every tab of the browser shares), with its boxes ("ExternalImageId 97.3%"), the labels
// seen and the worker's figures. A frame arriving while the previous one is still decoding replaces the
// waiting one: the view never lags behind.
"use strict";

(() => {
  const root = document.getElementById("live");
  if (!root) return;
  const img = document.getElementById("live-frame");
  const svg = document.getElementById("live-boxes");
  const name = root.dataset.name;
  const SVG = "http://www.w3.org/2000/svg";
  // What the page showed, for tests and benchmarks (bench/console.py drains mlhLiveDelays): frames shown, the
  // delay of each from analysed (worker) to shown (decoded here), in ms, the captions drawn, streams opened.
  const state = (window.mlhLive = { frames: 0, seq: null, boxes: [], names: [], opens: 0 });
  const delays = (window.mlhLiveDelays = []);
  let waiting = null, busy = false; // waiting: [frame, live] to show once the current one is decoded
  let newest = null; // the seq of the last frame given to the <img>

  function element(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function caption(entry) {
    if (entry.name !== undefined) return `${entry.name} ${entry.similarity.toFixed(1)}%`;
    if (entry.label !== undefined) return `${entry.label} ${entry.confidence.toFixed(1)}%`;
    return `face ${(entry.confidence || 0).toFixed(1)}%`;
  }

  function draw(frame) {
    const meta = frame.meta || {};
    const width = meta.width || img.naturalWidth || 640, height = meta.height || img.naturalHeight || 480;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const names = [];
    for (const entry of meta.boxes || []) {
      const b = entry.box, x = b.Left * width, y = b.Top * height;
      const text = caption(entry);
      names.push(text);
      svg.append(element("rect", {
        class: entry.name === undefined && entry.label === undefined ? "box unknown" : "box",
        x, y, width: b.Width * width, height: b.Height * height,
      }));
      const top = Math.max(0, y - 22);
      svg.append(element("rect", { class: "tag", x, y: top, width: 9 * text.length + 10, height: 22, rx: 3 }));
      svg.append(element("text", { x: x + 5, y: top + 16 }, text));
    }
    state.boxes = meta.boxes || [];
    state.names = names;
    stats(frame);
    labels(meta.labels);
  }

  function stats(frame) {
    const out = document.getElementById("live-stats");
    const s = (frame.meta || {}).stats || {};
    if (!out) return;
    const parts = [];
    if (s.records_per_s !== undefined) parts.push(`${s.records_per_s} records/s`);
    if (s.latency_ms !== undefined && s.latency_ms !== null) parts.push(`latency ${Math.round(s.latency_ms)} ms`);
    if (s.cpu !== undefined) parts.push(`worker CPU ${Math.round(s.cpu * 100)}%`);
    if (frame.analysed_at) parts.push(`analysed ${new Date(frame.analysed_at * 1000).toLocaleTimeString()}`);
    out.textContent = parts.join(" · ");
  }

  function labels(seen) {
    const list = document.getElementById("live-labels");
    if (!list || !seen) return;
    if (!seen.length) return;
    const page = root.dataset.stream.replace(/\/live(\?.*)?$/, "");
    list.innerHTML = seen.map((l) => {
      const key = (uri) => uri.replace(/^s3:\/\/[^/]+\//, "");
      const link = (uri, text) => `<a href="${page}/s3/${encodeURI(key(uri))}" target="_blank">${text}</a>`;
      return `<li><b>${mlhEscape(l.name)}</b> ${l.confidence.toFixed(1)}% · ${link(l.frame, "frame")} · ${link(l.crop, "crop")}</li>`;
    }).join("");
  }

  function show(frame, live) {
    busy = true;
    newest = frame.seq;
    const done = (ok) => {
      busy = false;
      if (ok) {
        root.classList.add("has-frame");
        state.frames += 1;
        state.seq = frame.seq;
        if (live && frame.analysed_at) {
          delays.push(Date.now() - frame.analysed_at * 1000);
          if (delays.length > 10000) delays.shift();
        }
        draw(frame);
      }
      if (waiting && !document.hidden) { const [next, nextLive] = waiting; waiting = null; show(next, nextLive); }
    };
    img.src = frame.image;
    // Shown = decoded, ready for the next paint (load alone may leave the decoding to the paint).
    img.decode().then(() => done(true), () => done(img.complete && img.naturalWidth > 0));
  }

  // A frame arrives: "frame" is newly analysed (its delay counts), "latest" was already there when the stream
  // began (shown, not timed). One already shown (the same seq again after a reconnection) is skipped; a
  // smaller seq is a processor deleted and created again (its seq began again at 0): shown.
  function received(message) {
    if (message.type === "open") { state.opens += 1; return; }
    const frame = message.frame;
    if (!frame || !frame.image || frame.name !== name) return;
    if (newest !== null && frame.seq === newest) return;
    if (newest !== null && frame.seq < newest) newest = null;
    const live = message.type === "frame";
    // A hidden tab decodes nothing: it shows the newest frame when it is looked at again.
    if (busy || document.hidden) waiting = [frame, live]; else show(frame, live);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden || busy || !waiting) return;
    const [frame] = waiting;
    waiting = null;
    show(frame, false);
  });

  // Pages share one stream through a SharedWorker (a browser holds at most 6 connections to a host); where
  // there is none, a stream of their own. The worker is one per account and region (its name): a page of
  // another sign-in never gets, nor replays, this one's frames.
  function connect() {
    if (typeof SharedWorker !== "undefined") {
      try {
        const scope = `mlharbor-live:${root.dataset.account}:${root.dataset.region}`;
        const port = new SharedWorker("/console/static/live-worker.js", { name: scope }).port;
        port.onmessage = (event) => received(event.data);
        port.start();
        port.postMessage({ join: name });
        setInterval(() => port.postMessage({ alive: name }), 5000);
        window.addEventListener("pagehide", () => port.postMessage({ leave: true }));
        window.addEventListener("pageshow", (event) => { if (event.persisted) port.postMessage({ join: name }); });
        return;
      } catch (error) {
        console.warn("live view: no shared worker, a stream of this page's own", error);
      }
    }
    const source = new EventSource(root.dataset.stream);
    source.addEventListener("open", () => received({ type: "open" }));
    for (const kind of ["frame", "latest"]) {
      source.addEventListener(kind, (event) => received({ type: kind, frame: JSON.parse(event.data) }));
    }
    window.addEventListener("pagehide", () => source.close());
  }
  connect();
})();
