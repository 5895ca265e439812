// Face collection page: a photo dropped (or chosen) is searched with SearchFacesByImage; the face searched is
// boxed on the photo and the matches listed. Thumbnails that cannot be shown are hidden.
"use strict";

(() => {
  // A source image that could not be read (deleted since): hide its thumbnail rather than a broken image.
  document.addEventListener("error", (event) => {
    const img = event.target;
    if (img.tagName === "IMG" && img.closest(".thumb, #matches")) img.closest(".thumb, td").replaceChildren();
  }, true);

  const section = document.getElementById("search");
  if (!section) return;
  const collectionId = section.dataset.collection;
  const drop = document.getElementById("drop");
  const input = document.getElementById("photo");
  const status = document.getElementById("search-status");
  const result = document.getElementById("search-result");
  const photo = document.getElementById("search-photo");
  const box = document.getElementById("search-box");
  const rows = document.querySelector("#matches tbody");
  const MAX_BYTES = 5 * 1024 * 1024; // Image.Bytes' limit
  const MAX_SIDE = 1920;

  function say(text, bad) {
    status.textContent = text;
    status.className = bad ? "error" : "hint";
  }

  function base64(buffer) {
    const bytes = new Uint8Array(buffer);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(binary);
  }

  // JPEG and PNG under 5 MB go as they are; anything else the browser can show is re-encoded as a JPEG.
  async function bytesOf(file) {
    if ((file.type === "image/jpeg" || file.type === "image/png") && file.size <= MAX_BYTES) return file.arrayBuffer();
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
    return blob.arrayBuffer();
  }

  function thumbnailUrl(faceId) {
    return `/console/collections/${encodeURIComponent(collectionId)}/faces/${encodeURIComponent(faceId)}/source.jpg`;
  }

  async function search(file) {
    if (!file) return;
    rows.replaceChildren();
    box.setAttribute("width", 0);
    box.setAttribute("height", 0);
    const old = photo.src;
    photo.src = URL.createObjectURL(file);
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    result.hidden = false;
    say(`Searching ${file.name}…`);
    let answer;
    try {
      const image = base64(await bytesOf(file));
      answer = await mlhCall("rekognition", "SearchFacesByImage", {
        CollectionId: collectionId, Image: { Bytes: image }, MaxFaces: 10, FaceMatchThreshold: 70,
      });
    } catch (error) {
      say(error.message, true);
      return;
    }
    const b = answer.SearchedFaceBoundingBox || {};
    for (const [k, v] of [["x", b.Left], ["y", b.Top], ["width", b.Width], ["height", b.Height]]) box.setAttribute(k, v || 0);
    const matches = answer.FaceMatches || [];
    for (const match of matches) {
      const face = match.Face || {};
      const row = document.createElement("tr");
      row.dataset.faceId = face.FaceId;
      row.innerHTML = `<td><img loading="lazy" alt="" src="${mlhEscape(thumbnailUrl(face.FaceId))}"></td>` +
        `<td class="external">${mlhEscape(face.ExternalImageId || "")}</td>` +
        `<td><code>${mlhEscape(face.FaceId)}</code></td>` +
        `<td class="num">${Number(match.Similarity).toFixed(2)}</td>`;
      rows.appendChild(row);
    }
    say(matches.length
      ? `${matches.length} match${matches.length === 1 ? "" : "es"} at or above 70% similarity (the face found with ${Number(answer.SearchedFaceConfidence).toFixed(1)}% confidence).`
      : "No face of the collection matches at or above 70% similarity.");
  }

  input.addEventListener("change", () => search(input.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    search(event.dataTransfer.files[0]);
  });
})();
