// MLHarbor console: the little JavaScript the pages share. No framework, no build step.
"use strict";

// Run an API operation as the signed-in user (the same operation, validation and errors as the API).
async function mlhCall(service, operation, params) {
  const response = await fetch(`/console/api/call/${service}/${operation}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-MLHarbor-Console": "1" },
    body: JSON.stringify(params || {}),
    credentials: "same-origin",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(`${body.code || response.status}: ${body.message || ""}`);
    error.code = body.code;
    throw error;
  }
  return body;
}

// Buttons declared in HTML: <button data-call="rekognition StopStreamProcessor" data-params='{"Name":"x"}'>
// run the operation, show its error next to the button, and reload the page when it succeeded.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-call]");
  if (!button) return;
  event.preventDefault();
  const [service, operation] = button.dataset.call.split(" ");
  const out = document.getElementById(button.dataset.out || "action-result");
  button.disabled = true;
  try {
    await mlhCall(service, operation, JSON.parse(button.dataset.params || "{}"));
    if (out) { out.textContent = `${operation}: done`; out.className = "hint"; }
    if (button.dataset.reload !== "no") setTimeout(() => location.reload(), 300);
  } catch (error) {
    if (out) { out.textContent = error.message; out.className = "error"; }
  } finally {
    button.disabled = false;
  }
});

// Elements with data-refresh="SECONDS" (and an id) reload their content from the same page while it is open.
function mlhRefreshed(element) { /* the element was replaced: keep refreshing the new one */
  const every = parseFloat(element.dataset.refresh) * 1000;
  if (!(every > 0)) return; // a block that came back without data-refresh is final
  setTimeout(async () => {
    if (document.hidden) { mlhRefreshed(element); return; } // nobody looks: ask again later
    let fresh = null;
    try {
      const response = await fetch(location.href, {
        credentials: "same-origin", headers: { "X-MLHarbor-Refresh": element.id },
      });
      if (response.ok) {
        fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById(element.id);
      }
    } catch (_) { /* the server is restarting: try again next time */ }
    if (!element.isConnected) return;
    if (fresh) { element.replaceWith(fresh); mlhRefreshed(fresh); } else mlhRefreshed(element);
  }, every);
}
document.addEventListener("DOMContentLoaded", () => {
  for (const element of document.querySelectorAll("[data-refresh]")) mlhRefreshed(element);
});

function mlhEscape(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
