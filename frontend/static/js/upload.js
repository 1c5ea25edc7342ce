// The upload page: pick or drop files, folders or a ZIP, upload them as one study with
// per-file progress (a large folder in several requests, each retried on failure), then open
// the new study with the server's rejections listed.
import { ApiError, api, postWithProgress, urls } from "./api.js";
import { formatBytes, h, nextId, progressBar, setChildren, svgIcon } from "./dom.js";

const isZip = (file) => /\.zip$/i.test(file.name) || /zip/.test(file.type);

/** Hidden files and OS clutter found in folders are not offered for upload. */
function skippedName(path) {
  const base = path.split("/").pop();
  return !base || base.startsWith(".") || path.includes("__MACOSX/") || /^(thumbs\.db|desktop\.ini)$/i.test(base);
}

export const REPORT_KEY = (studyId) => `pneumoscan:upload-report:${studyId}`;

// A large folder goes in parts: each request stays short (a failed one is retried alone) and
// the server stores each part as it arrives. One progress bar covers them all.
export const PART_MAX_FILES = 100;
export const PART_MAX_BYTES = 64 * 1024 * 1024;
const PART_RETRIES = 3;

/** Entries grouped into parts of at most PART_MAX_FILES files and PART_MAX_BYTES bytes. */
export function splitParts(list, { maxFiles = PART_MAX_FILES, maxBytes = PART_MAX_BYTES } = {}) {
  const parts = [];
  let current = [];
  let bytes = 0;
  for (const entry of list) {
    const size = entry.file.size;
    if (current.length && (current.length >= maxFiles || bytes + size > maxBytes)) {
      parts.push(current);
      current = [];
      bytes = 0;
    }
    current.push(entry);
    bytes += size;
  }
  if (current.length) parts.push(current);
  return parts;
}

function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walkEntry(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, path: prefix + file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await readEntries(reader);
      if (!batch.length) break;
      for (const child of batch) await walkEntry(child, `${prefix}${entry.name}/`, out);
    }
  }
}

export function uploadView(main, { navigate }) {
  const entries = [];
  let uploading = null;

  const nameInput = h("input", { id: "upload-name", name: "name", maxlength: "200", autocomplete: "off", placeholder: "e.g. Ward 3 morning round" });
  const accessionInput = h("input", { id: "upload-accession", name: "accession_number", maxlength: "64", autocomplete: "off" });
  const priorityInput = h("select", { id: "upload-priority", name: "priority" },
    h("option", { value: "routine" }, "Routine"), h("option", { value: "urgent" }, "Urgent"));

  const pickFiles = h("input", { id: "pick-files", type: "file", multiple: true, class: "visually-hidden", tabindex: "-1", "aria-label": "Choose X-ray files" });
  const pickFolder = h("input", { id: "pick-folder", type: "file", multiple: true, webkitdirectory: true, class: "visually-hidden", tabindex: "-1", "aria-label": "Choose a folder" });
  const pickZip = h("input", { id: "pick-zip", type: "file", multiple: true, accept: ".zip,application/zip", class: "visually-hidden", tabindex: "-1", "aria-label": "Choose a ZIP archive" });

  const dropzone = h("div", { class: "dropzone", id: "dropzone" },
    svgIcon("upload"),
    h("p", { class: "dropzone-title" }, "Drag and drop X-rays, folders or a ZIP archive here"),
    h("p", { class: "muted small" }, "JPEG, PNG or DICOM files, or ZIP archives of them · up to 1000 images per study"),
    h("div", { class: "dropzone-actions" },
      h("button", { type: "button", class: "btn", onclick: () => pickFiles.click() }, svgIcon("file"), "Choose files"),
      h("button", { type: "button", class: "btn", onclick: () => pickFolder.click() }, svgIcon("folder"), "Choose folder"),
      h("button", { type: "button", class: "btn", onclick: () => pickZip.click() }, svgIcon("zip"), "Choose ZIP")),
    pickFiles, pickFolder, pickZip);

  const listSummary = h("p", { class: "file-summary", "aria-live": "polite" });
  const clearButton = h("button", { type: "button", class: "btn btn-ghost btn-small", hidden: true }, "Clear all");
  const list = h("ul", { class: "file-list", id: "file-list", "aria-label": "Files to upload" });
  const overall = progressBar("Overall upload progress", { size: "progress-lg" });
  const overallText = h("span", { class: "progress-text" });
  const overallBox = h("div", { class: "overall", hidden: true }, overall.el, overallText);
  const error = h("div", { class: "form-error", role: "alert", id: "upload-error" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", disabled: true }, svgIcon("upload"), "Upload and analyse");
  const cancelUpload = h("button", { type: "button", class: "btn", hidden: true }, "Cancel upload");

  const form = h("form", { class: "card upload-form", id: "upload-form", "aria-labelledby": "upload-title" },
    h("div", { class: "grid-fields" },
      h("div", { class: "field" }, h("label", { for: nameInput.id }, "Study name"), nameInput),
      h("div", { class: "field" }, h("label", { for: accessionInput.id }, "Accession number"), accessionInput),
      h("div", { class: "field" }, h("label", { for: priorityInput.id }, "Priority"), priorityInput)),
    dropzone,
    h("div", { class: "file-list-head" }, listSummary, clearButton),
    list,
    overallBox,
    error,
    h("div", { class: "form-actions" }, cancelUpload, submit));

  setChildren(main, h("section", { class: "page page-narrow" },
    h("a", { class: "back", href: "#/studies" }, "← All studies"),
    h("div", { class: "page-head" },
      h("div", {}, h("h1", { id: "upload-title" }, "New upload"),
        h("p", { class: "muted" }, "Each upload becomes one study. Files are checked on arrival; unreadable ones are listed with the reason."))),
    form));

  function refreshSummary() {
    const total = entries.reduce((sum, e) => sum + e.file.size, 0);
    listSummary.textContent = entries.length
      ? `${entries.length} ${entries.length === 1 ? "file" : "files"} · ${formatBytes(total)}`
      : "No files selected yet.";
    clearButton.hidden = !entries.length || Boolean(uploading);
    submit.disabled = !entries.length || Boolean(uploading);
  }

  function setStatus(entry, state, text) {
    entry.state = state;
    entry.li.dataset.state = state;
    entry.statusEl.textContent = text;
  }

  function addFiles(items) {
    const known = new Set(entries.map((e) => `${e.path}|${e.file.size}|${e.file.lastModified}`));
    for (const { file, path } of items) {
      const key = `${path}|${file.size}|${file.lastModified}`;
      if (known.has(key) || skippedName(path)) continue;
      known.add(key);
      const entry = { id: nextId("file"), file, path, state: "ready", zip: isZip(file) };
      entry.bar = progressBar(`Upload of ${file.name}`, { size: "progress-sm" });
      entry.statusEl = h("span", { class: "file-status" }, "Ready");
      entry.remove = h("button", {
        type: "button", class: "icon-btn", "aria-label": `Remove ${path}`, title: "Remove",
        onclick: () => {
          entries.splice(entries.indexOf(entry), 1);
          entry.li.remove();
          refreshSummary();
        },
      }, svgIcon("close"));
      entry.li = h("li", { class: "file-row", dataset: { state: "ready" } },
        h("div", { class: "file-main" },
          h("span", { class: "file-name", title: path }, path),
          h("span", { class: "file-size muted" }, formatBytes(file.size),
            entry.zip ? " · ZIP archive, unpacked and checked on the server" : "")),
        h("div", { class: "file-progress" }, entry.bar.el, entry.statusEl),
        entry.remove);
      entries.push(entry);
      list.append(entry.li);
    }
    setChildren(error);
    refreshSummary();
  }

  function fromInput(input) {
    const items = [...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
    input.value = "";
    addFiles(items);
  }
  pickFiles.addEventListener("change", () => fromInput(pickFiles));
  pickFolder.addEventListener("change", () => fromInput(pickFolder));
  pickZip.addEventListener("change", () => fromInput(pickZip));

  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      if (!uploading) dropzone.classList.add("dragging");
    });
  }
  dropzone.addEventListener("dragleave", (event) => {
    if (!dropzone.contains(event.relatedTarget)) dropzone.classList.remove("dragging");
  });
  dropzone.addEventListener("drop", async (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    if (uploading) return;
    const dt = event.dataTransfer;
    const roots = [...(dt.items || [])].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
    const items = [];
    if (roots.length) {
      for (const entry of roots) await walkEntry(entry, "", items);
    } else {
      items.push(...[...dt.files].map((file) => ({ file, path: file.name })));
    }
    addFiles(items);
  });
  clearButton.addEventListener("click", () => {
    entries.splice(0);
    setChildren(list);
    setChildren(error);
    refreshSummary();
  });

  const warnLeaving = (event) => {
    event.preventDefault();
    event.returnValue = "";
  };

  function setBusy(busy) {
    if (busy) window.addEventListener("beforeunload", warnLeaving);
    else window.removeEventListener("beforeunload", warnLeaving);
    for (const el of [nameInput, accessionInput, priorityInput, ...dropzone.querySelectorAll("button")]) el.disabled = busy;
    for (const entry of entries) entry.remove.disabled = busy;
    cancelUpload.hidden = !busy;
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function applyOutcome(body) {
    const rejected = new Map();
    for (const r of body.rejected || []) {
      if (!rejected.has(r.name)) rejected.set(r.name, []);
      rejected.get(r.name).push(r.reason);
    }
    const accepted = new Map();
    for (const image of body.accepted || []) accepted.set(image.original_name, (accepted.get(image.original_name) || 0) + 1);
    const global = rejected.get("*");
    const names = (body.accepted || []).map((image) => image.original_name);
    const refusals = body.rejected || [];
    for (const entry of entries) {
      entry.bar.set(1);
      if (entry.zip) {
        // The server names archive members "<archive>/<member>".
        const prefix = `${entry.file.name}/`;
        const ok = names.filter((name) => name.startsWith(prefix)).length;
        const refused = refusals.filter((r) => r.name === entry.file.name || r.name.startsWith(prefix));
        const whole = refused.find((r) => r.name === entry.file.name);
        if (whole) setStatus(entry, "rejected", `Rejected: ${whole.reason}`);
        else setStatus(entry, ok ? "accepted" : "rejected",
          `ZIP: ${ok} accepted${refused.length ? `, ${refused.length} rejected` : ""}`);
        continue;
      }
      const reasons = rejected.get(entry.file.name);
      if (reasons && reasons.length) {
        setStatus(entry, "rejected", `Rejected: ${reasons.shift()}`);
      } else if (accepted.get(entry.file.name)) {
        accepted.set(entry.file.name, accepted.get(entry.file.name) - 1);
        setStatus(entry, "accepted", "Accepted");
      } else {
        setStatus(entry, "rejected", global ? `Rejected: ${global[0]}` : "Not stored");
      }
    }
  }

  cancelUpload.addEventListener("click", () => uploading && uploading.abort());

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!entries.length || uploading) return;
    setChildren(error);
    const parts = splitParts(entries);
    const total = entries.reduce((sum, entry) => sum + entry.file.size, 0) || 1;
    let sentBefore = 0; // bytes of the parts already answered
    for (const entry of entries) {
      entry.bar.set(0);
      setStatus(entry, "uploading", "Waiting");
    }
    overallBox.hidden = false;
    overall.set(0);
    overallText.textContent = "Starting upload…";
    setBusy(true);
    refreshSummary();

    const fields = {
      name: nameInput.value.trim(),
      accession_number: accessionInput.value.trim(),
      priority: priorityInput.value,
    };

    /** One request of the upload (retried on network errors, 429 and 5xx), with progress. */
    async function sendPart(part, index, url, extra) {
      const partBytes = part.reduce((sum, entry) => sum + entry.file.size, 0) || 1;
      const offsets = [];
      let sum = 0;
      for (const entry of part) {
        offsets.push(sum);
        sum += entry.file.size;
      }
      for (let attempt = 0; ; attempt += 1) {
        const data = new FormData();
        for (const [key, value] of Object.entries(extra)) data.append(key, value);
        for (const entry of part) data.append("files", entry.file, entry.file.name);
        uploading = postWithProgress(url, data, {
          onProgress(loaded, size) {
            const sent = sentBefore + (loaded / size) * partBytes;
            overall.set(sent / total);
            const label = parts.length > 1 ? ` · part ${index + 1} of ${parts.length}` : "";
            overallText.textContent = `${formatBytes(sent)} of ${formatBytes(total)} · ${Math.round((100 * sent) / total)} %${label}`;
            // Files travel in order in the multipart body: map the bytes sent onto each file.
            const inPart = (loaded / size) * partBytes;
            part.forEach((entry, i) => {
              const fraction = Math.max(0, Math.min(1, (inPart - offsets[i]) / (entry.file.size || 1)));
              entry.bar.set(fraction);
              if (entry.state === "uploading") {
                entry.statusEl.textContent = fraction >= 1 ? "Sent" : fraction > 0 ? `${Math.round(fraction * 100)} %` : "Waiting";
              }
            });
          },
          onUploaded() {
            for (const entry of part) {
              entry.bar.set(1);
              setStatus(entry, "checking", "Checking…");
            }
            if (index === parts.length - 1) overallText.textContent = "Upload complete · storing the files on the server…";
          },
        });
        let response = null;
        let failure = null;
        try {
          response = await uploading.promise;
        } catch (err) {
          if (err.name === "AbortError") throw err;
          failure = err;
        }
        if (response && response.status !== 429 && response.status < 500) return response;
        if (attempt >= PART_RETRIES) {
          throw failure || new ApiError(response.status, response.body);
        }
        overallText.textContent = `Part ${index + 1} of ${parts.length} failed; retrying (${attempt + 1} of ${PART_RETRIES})…`;
        for (const entry of part) setStatus(entry, "uploading", "Retrying");
        await new Promise((resolve) => setTimeout(resolve, 1000 * 2 ** attempt));
      }
    }

    const combined = { study: null, accepted: [], rejected: [] };
    let response;
    let partError = null;
    try {
      if (parts.length === 1) {
        response = await sendPart(parts[0], 0, urls.studies(), fields);
        if (response.body) Object.assign(combined, response.body);
      } else {
        // A large folder: a study open for more parts, one request per part, then closed.
        response = await sendPart(parts[0], 0, urls.studies(), { ...fields, receiving: "true" });
        const body = response.body || {};
        if (response.status === 201 && body.study) {
          combined.study = body.study;
          combined.accepted.push(...(body.accepted || []));
          combined.rejected.push(...(body.rejected || []));
          sentBefore += parts[0].reduce((sum, entry) => sum + entry.file.size, 0);
          for (let i = 1; i < parts.length; i += 1) {
            try {
              const next = await sendPart(parts[i], i, urls.studyFiles(body.study.id), {});
              combined.accepted.push(...((next.body && next.body.accepted) || []));
              combined.rejected.push(...((next.body && next.body.rejected) || []));
            } catch (err) {
              if (err.name === "AbortError") throw err;
              partError = err;
              for (const entry of parts.slice(i).flat()) combined.rejected.push({ name: entry.file.name, reason: `Not sent: ${err.message}` });
              break;
            }
            sentBefore += parts[i].reduce((sum, entry) => sum + entry.file.size, 0);
          }
          await api(urls.close(body.study.id), { method: "POST" });
          response = { status: 201, body: combined };
        }
      }
    } catch (err) {
      uploading = null;
      setBusy(false);
      overallBox.hidden = true;
      for (const entry of entries) setStatus(entry, "ready", "Ready");
      setChildren(error, h("p", {}, err.name === "AbortError" ? "Upload cancelled." : err.message));
      refreshSummary();
      return;
    }
    uploading = null;
    setBusy(false);
    const { status, body } = response;

    if (status === 201 && body && body.study) {
      applyOutcome(body);
      const report = {
        accepted: (body.accepted || []).length,
        rejected: body.rejected || [],
        error: partError ? partError.message : "",
      };
      try {
        sessionStorage.setItem(REPORT_KEY(body.study.id), JSON.stringify(report));
      } catch {
        // Private mode or quota: the study still opens, only without the report.
      }
      navigate(`#/studies/${body.study.id}`);
      return;
    }

    refreshSummary();
    overallBox.hidden = true;
    if (status === 401 || status === 403) {
      window.dispatchEvent(new CustomEvent("pneumoscan:unauthenticated"));
      setChildren(error, h("p", {}, "Your session has ended; log in again to upload."));
    } else if (status === 413) {
      setChildren(error, h("p", {}, "The upload is too large for the server; upload fewer files at a time."));
    } else if (body && Array.isArray(body.rejected)) {
      applyOutcome(body);
      setChildren(error, h("p", {}, "No file could be accepted, so no study was created. Remove the rejected files or add valid X-rays."));
      for (const entry of entries) {
        if (entry.state === "rejected") entry.remove.disabled = false;
      }
    } else {
      setChildren(error, h("p", {}, new ApiError(status, body).message));
      for (const entry of entries) setStatus(entry, "ready", "Ready");
    }
  });

  refreshSummary();
  return () => {
    window.removeEventListener("beforeunload", warnLeaving);
    if (uploading) uploading.abort();
  };
}
