// Video stream page: the timeline plays the archive from a clicked point, the live edge refreshes, and a
// record's FragmentNumber/offset or timestamp shows its frame. Media comes from the console's routes.
"use strict";

(() => {
  const root = document.getElementById("video");
  if (!root) return;
  const name = root.dataset.name;
  const base = `/console/videos/${encodeURIComponent(name)}`;
  const clipSeconds = parseFloat(root.dataset.clipSeconds) || 60;
  const player = document.getElementById("player");
  const status = document.getElementById("player-status");
  const playAt = document.getElementById("play-at");
  const playKind = document.getElementById("play-kind");

  function iso(seconds) { return new Date(seconds * 1000).toISOString(); }

  function say(element, text, bad) {
    element.textContent = text;
    element.className = bad ? "error" : "hint";
  }

  // The error a media route answered (a <video> or <img> cannot read it): asked again with fetch.
  async function why(url) {
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) return "the browser could not play it";
      const body = await response.json().catch(() => ({}));
      return `${body.code || response.status}: ${body.message || ""}`;
    } catch (error) { return String(error); }
  }

  function play(url, label) {
    say(status, `Loading ${label}…`);
    player.dataset.src = url;
    player.src = url;
    player.play().catch(() => {});
  }
  player.addEventListener("playing", () => say(status, `Playing ${player.dataset.label || ""}`.trim()));
  player.addEventListener("error", async () => {
    if (!player.dataset.src) return;
    say(status, await why(player.dataset.src), true);
  });

  function playFrom(seconds, kind) {
    const url = `${base}/clip.mp4?start=${seconds.toFixed(3)}&end=${(seconds + clipSeconds).toFixed(3)}&kind=${kind}`;
    player.dataset.label = `from ${iso(seconds)} (${kind} time)`;
    play(url, player.dataset.label);
  }

  document.getElementById("play-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = playAt.value.trim();
    let seconds = Number(text);
    if (!text || Number.isNaN(seconds)) seconds = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : `${text}Z`) / 1000;
    else if (seconds > 1e11) seconds /= 1000;
    if (!Number.isFinite(seconds)) { say(status, `Not a time: ${text}`, true); return; }
    playFrom(seconds, playKind.value);
  });
  document.getElementById("play-live").addEventListener("click", () => {
    player.dataset.label = "the last seconds";
    play(`${base}/clip.mp4?last=${document.getElementById("play-live").dataset.seconds}`, "the last seconds");
  });

  // A click on the timeline (the section is refreshed in place: listen on the document).
  document.addEventListener("click", (event) => {
    const svg = event.target.closest("svg.timeline");
    if (!svg) return;
    const box = svg.getBoundingClientRect();
    const viewWidth = svg.viewBox.baseVal.width;
    const x = (event.clientX - box.left) * viewWidth / box.width;
    const left = parseFloat(svg.dataset.left), right = parseFloat(svg.dataset.right);
    const start = parseFloat(svg.dataset.start), end = parseFloat(svg.dataset.end);
    const at = start + Math.min(Math.max((x - left) / (right - left), 0), 1) * (end - start);
    let cursor = svg.querySelector("line.cursor");
    if (!cursor) {
      cursor = document.createElementNS("http://www.w3.org/2000/svg", "line");
      cursor.setAttribute("class", "cursor");
      svg.appendChild(cursor);
    }
    const cx = Math.min(Math.max(x, left), right);
    for (const [k, v] of [["x1", cx], ["x2", cx], ["y1", 2], ["y2", svg.viewBox.baseVal.height - 20]]) cursor.setAttribute(k, v);
    playAt.value = iso(at);
    playKind.value = "server";
    playFrom(at, "server");
  });

  // The live edge: the newest frame, one request at a time, about one a second while checked and visible.
  const live = document.getElementById("live-frame");
  const liveOn = document.getElementById("live-on");
  const liveStatus = document.getElementById("live-status");
  let liveTimer = null;
  function liveNext(delay) {
    clearTimeout(liveTimer);
    liveTimer = setTimeout(liveLoad, delay);
  }
  async function liveLoad() {
    if (!liveOn.checked) return;
    if (document.hidden) { liveNext(1000); return; }
    const url = `${base}/frame.jpg?at=latest&width=960`;
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        say(liveStatus, `${body.code || response.status}: ${body.message || ""}`, true);
      } else {
        const blob = await response.blob();
        const old = live.src;
        live.src = URL.createObjectURL(blob);
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
        const server = parseFloat(response.headers.get("X-Server-Timestamp"));
        say(liveStatus, `Fragment ${response.headers.get("X-Fragment-Number")}, ${iso(server)} (server time)`);
      }
    } catch (error) {
      say(liveStatus, String(error), true);
    }
    liveNext(1000);
  }
  liveOn.addEventListener("change", () => { if (liveOn.checked) liveLoad(); else clearTimeout(liveTimer); });

  // "Show me this record's frame".
  const form = document.getElementById("record-form");
  const fields = {
    json: document.getElementById("record-json"), fragment: document.getElementById("record-fragment"),
    offset: document.getElementById("record-offset"), at: document.getElementById("record-at"),
    kind: document.getElementById("record-kind"),
  };
  fields.json.addEventListener("input", () => {
    let record;
    try { record = JSON.parse(fields.json.value); } catch { return; }
    const kv = (record && record.InputInformation && record.InputInformation.KinesisVideo) || record || {};
    if (kv.FragmentNumber) fields.fragment.value = kv.FragmentNumber;
    if (kv.FrameOffsetInSeconds !== undefined) fields.offset.value = kv.FrameOffsetInSeconds;
    if (kv.ServerTimestamp !== undefined) { fields.at.value = kv.ServerTimestamp; fields.kind.value = "server"; }
    else if (kv.ProducerTimestamp !== undefined) { fields.at.value = kv.ProducerTimestamp; fields.kind.value = "producer"; }
  });
  const result = document.getElementById("record-result");
  const image = document.getElementById("record-image");
  const caption = document.getElementById("record-caption");
  const failure = document.getElementById("record-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (fields.fragment.value.trim()) query.set("fragment", fields.fragment.value.trim());
    else if (fields.at.value.trim()) { query.set("at", fields.at.value.trim()); query.set("kind", fields.kind.value); }
    else { failure.textContent = "Give a FragmentNumber or a timestamp."; failure.hidden = false; result.hidden = true; return; }
    if (fields.offset.value.trim()) query.set("offset", fields.offset.value.trim());
    const response = await fetch(`${base}/frame.jpg?${query}`, { credentials: "same-origin" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      failure.textContent = `${body.code || response.status}: ${body.message || ""}`;
      failure.hidden = false;
      result.hidden = true;
      return;
    }
    const old = image.src;
    image.src = URL.createObjectURL(await response.blob());
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    const h = (k) => response.headers.get(k);
    caption.textContent = `Fragment ${h("X-Fragment-Number")}, ${h("X-Frame-Offset")} s in: ` +
      `producer time ${iso(parseFloat(h("X-Producer-Timestamp")))}, server time ${iso(parseFloat(h("X-Server-Timestamp")))}`;
    failure.hidden = true;
    result.hidden = false;
  });
})();
