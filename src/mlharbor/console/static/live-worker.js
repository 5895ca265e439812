// The console's live views, shared by every tab of this browser: one server-sent-event stream
// (/console/live?name=a&name=b) for all the processors the open pages show. Over HTTP/1.1 a browser keeps at
// most 6 connections to a host: one stream per tab left the seventh tab unable to load anything.
// A page posts {join: name} (and {alive: name} every few seconds, {leave: true} when it goes); the worker
// posts it {type: "open"} when the stream (re)opens and {type: "frame"|"latest", frame} for its processor.
// There is one worker per account and region: pages name it "mlharbor-live:<account>:<region>", so its
// pages, names and cached frames are of that scope only; its stream says the scope, and the server refuses
// it once the browser's cookie names another (signed in again elsewhere): this worker's pages then get
// nothing more, never another account's processor of the same name.
"use strict";

const [, account = "", region = ""] = (self.name || "").split(":");
const pages = new Map(); // port -> {name, seen}
const latest = new Map(); // processor name -> its last frame (of this scope), for a page that joins
let source = null, streaming = "";
const GONE_MS = 20000; // a page silent this long is gone (a crashed tab never says so)

function names() {
  return [...new Set([...pages.values()].map((p) => p.name))].sort();
}

function post(name, message) {
  for (const [port, page] of pages) if (name === null || page.name === name) port.postMessage(message);
}

function stream() {
  const wanted = names();
  if (wanted.join("\n") === streaming) return;
  streaming = wanted.join("\n");
  for (const name of [...latest.keys()]) if (!wanted.includes(name)) latest.delete(name);
  if (source) source.close();
  source = null;
  if (!wanted.length) return;
  const query = wanted.map((n) => `name=${encodeURIComponent(n)}`);
  query.push(`account=${encodeURIComponent(account)}`, `region=${encodeURIComponent(region)}`);
  source = new EventSource("/console/live?" + query.join("&"));
  source.addEventListener("open", () => post(null, { type: "open" }));
  for (const kind of ["frame", "latest"]) {
    source.addEventListener(kind, (event) => {
      const frame = JSON.parse(event.data);
      latest.set(frame.name, frame);
      post(frame.name, { type: kind, frame });
    });
  }
}

onconnect = (event) => {
  const port = event.ports[0];
  port.onmessage = ({ data }) => {
    if (data.leave) {
      pages.delete(port);
    } else if (data.join) {
      pages.set(port, { name: data.join, seen: Date.now() });
      if (streaming.split("\n").includes(data.join)) port.postMessage({ type: "open" });
      const last = latest.get(data.join);
      if (last) port.postMessage({ type: "latest", frame: last });
    } else if (data.alive && pages.has(port)) {
      pages.get(port).seen = Date.now();
    }
    stream();
  };
  port.start();
};

setInterval(() => {
  for (const [port, page] of pages) if (Date.now() - page.seen > GONE_MS) pages.delete(port);
  stream();
}, 5000);
