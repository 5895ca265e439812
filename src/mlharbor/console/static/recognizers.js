// Entity recognizer page: "Try it" runs DetectEntities on pasted text and highlights the entities in place.
"use strict";

// Comprehend's offsets count characters (Unicode code points); JavaScript strings count UTF-16 units, and an
// emoji or other astral character is two of them. index[n] is where code point n starts in the string.
function mlhCodeUnitIndex(text) {
  const index = [0];
  let units = 0;
  for (const character of text) {
    units += character.length;
    index.push(units);
  }
  return index;
}

// The text as DOM nodes, each entity wrapped in <mark class="entity">; user text only ever goes in text nodes.
function mlhHighlight(container, text, entities) {
  const at = mlhCodeUnitIndex(text);
  const characters = at.length - 1;
  const sorted = [...entities].sort((a, b) => a.BeginOffset - b.BeginOffset || b.EndOffset - a.EndOffset);
  const nodes = [];
  let position = 0;
  for (const entity of sorted) {
    const { BeginOffset: first, EndOffset: last } = entity;
    if (!(first >= 0 && last > first && last <= characters)) continue;
    const begin = at[first], end = at[last];
    if (begin < position) continue; // overlaps the one before: keep the first
    nodes.push(document.createTextNode(text.slice(position, begin)));
    const mark = document.createElement("mark");
    mark.className = "entity";
    mark.dataset.type = entity.Type;
    mark.title = `${entity.Type}, score ${entity.Score.toFixed(3)} (characters ${first}–${last})`;
    const span = document.createElement("span");
    span.className = "entity-text";
    span.textContent = text.slice(begin, end);
    const label = document.createElement("sup");
    label.textContent = `${entity.Type} ${Math.round(entity.Score * 100)}%`;
    mark.append(span, label);
    nodes.push(mark);
    position = end;
  }
  nodes.push(document.createTextNode(text.slice(position)));
  container.replaceChildren(...nodes);
}

function mlhEntityRows(body, entities) {
  body.replaceChildren(...entities.map((entity) => {
    const row = document.createElement("tr");
    for (const [value, numeric] of [
      [entity.Text, false], [entity.Type, false], [entity.Score.toFixed(3), true],
      [`${entity.BeginOffset}–${entity.EndOffset}`, true],
    ]) {
      const cell = document.createElement("td");
      if (numeric) cell.className = "num";
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("try-run");
  if (!run) return;
  const endpoint = document.getElementById("try-endpoint");
  const input = document.getElementById("try-text");
  const status = document.getElementById("try-status");
  const output = document.getElementById("try-output");
  const table = document.getElementById("try-entities");

  async function detect() {
    const text = input.value;
    if (!text.trim()) {
      status.textContent = "Paste some text first.";
      status.className = "error";
      return;
    }
    run.disabled = true;
    status.textContent = "Detecting…";
    status.className = "hint";
    try {
      // An endpoint's own recognizer sets the language: LanguageCode goes only with built-in types.
      const answer = await mlhCall("comprehend", "DetectEntities", { EndpointArn: endpoint.value, Text: text });
      const entities = answer.Entities || [];
      mlhHighlight(output, text, entities);
      mlhEntityRows(table.tBodies[0], entities);
      output.hidden = false;
      table.hidden = entities.length === 0;
      status.textContent = `${entities.length} entit${entities.length === 1 ? "y" : "ies"} found.`;
    } catch (error) {
      status.textContent = error.message;
      status.className = "error";
    } finally {
      run.disabled = false;
    }
  }

  run.addEventListener("click", detect);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) detect();
  });
});
