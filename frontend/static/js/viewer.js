// The image viewer: the X-ray large, heatmap overlay with opacity, region box, class
// probabilities, etiology, threshold and model; arrow keys move, Esc closes.
import { urls } from "./api.js";
import { formatPercent, h, setChildren, svgIcon } from "./dom.js";
import { classLabel, FLAG_HELP, flagText, imageBadge, scopeNote } from "./labels.js";

const prefs = { heatmap: true, opacity: 55, box: true };

function heatmapUrl(image) {
  if (!image || !image.result) return null;
  return image.heatmap_url === undefined ? urls.heatmap(image.id) : image.heatmap_url;
}

function probabilityRows(probabilities, predicted, prefix) {
  const entries = Object.entries(probabilities || {}).sort((a, b) => b[1] - a[1]);
  return h("ul", { class: "prob-list" }, entries.map(([name, value]) =>
    h("li", { class: `prob-row ${name === predicted ? "predicted" : ""}`, dataset: { class: name } },
      h("span", { class: "prob-name" }, classLabel(name)),
      h("span", { class: "prob-track", "aria-hidden": "true" },
        h("span", { class: `prob-fill ${prefix}-${name}`, style: { width: `${Math.round(value * 1000) / 10}%` } })),
      h("span", { class: "prob-value" }, formatPercent(value, 1)))));
}

function info(label, value) {
  if (value === null || value === undefined || value === "") return null;
  return [h("dt", {}, label), h("dd", {}, String(value))];
}

export function createViewer({ images, onNavigate, onClose }) {
  const root = document.getElementById("overlay-root");
  const inertTargets = [...document.body.children].filter((el) => el !== root && el.id !== "toast");
  const previousFocus = document.activeElement;
  let current = null;

  const titleEl = h("h2", { id: "viewer-title", class: "viewer-title" });
  const counter = h("span", { class: "viewer-counter muted", "aria-live": "polite" });
  const prevBtn = h("button", { type: "button", class: "icon-btn dark", id: "viewer-prev", "aria-label": "Previous image", title: "Previous (←)" }, svgIcon("left"));
  const nextBtn = h("button", { type: "button", class: "icon-btn dark", id: "viewer-next", "aria-label": "Next image", title: "Next (→)" }, svgIcon("right"));
  const closeBtn = h("button", { type: "button", class: "icon-btn dark", id: "viewer-close", "aria-label": "Close viewer", title: "Close (Esc)" }, svgIcon("close"));

  const xray = h("img", { class: "xray", id: "viewer-image", alt: "" });
  const heat = h("img", { class: "heat", id: "viewer-heatmap", alt: "", "aria-hidden": "true" });
  const box = h("div", { class: "bbox", id: "viewer-bbox", "aria-hidden": "true" });
  const frame = h("div", { class: "frame" }, xray, heat, box);
  const stageNote = h("p", { class: "stage-note" });
  const stage = h("div", { class: "stage" }, frame, stageNote);

  const heatToggle = h("input", { type: "checkbox", id: "toggle-heatmap", role: "switch", checked: prefs.heatmap });
  const opacity = h("input", { type: "range", id: "heatmap-opacity", min: "0", max: "100", step: "5", value: String(prefs.opacity) });
  const opacityValue = h("output", { for: opacity.id, class: "muted small" });
  const boxToggle = h("input", { type: "checkbox", id: "toggle-bbox", role: "switch", checked: prefs.box });
  const controls = h("fieldset", { class: "viewer-controls" },
    h("legend", {}, "Display"),
    h("label", { class: "check", for: heatToggle.id }, heatToggle, "Heatmap overlay"),
    h("div", { class: "field slider" }, h("label", { for: opacity.id }, "Heatmap opacity"), opacity, opacityValue),
    h("label", { class: "check", for: boxToggle.id }, boxToggle, "Most activated region"));
  const details = h("div", { class: "viewer-details" });
  const panel = h("aside", { class: "viewer-panel", "aria-label": "Result" }, details, controls,
    h("p", { class: "viewer-disclaimer small" },
      "The heatmap shows where the model looked, not a diagnosis. Results support, and do not replace, a clinician's reading."));

  const dialog = h("div", {
    class: "viewer", role: "dialog", "aria-modal": "true", "aria-labelledby": titleEl.id, tabindex: "-1", id: "viewer",
  },
  h("header", { class: "viewer-head" },
    h("div", { class: "viewer-heading" }, titleEl, counter),
    h("div", { class: "viewer-nav" }, prevBtn, nextBtn, closeBtn)),
  h("div", { class: "viewer-body" }, stage, panel));
  const backdrop = h("div", { class: "viewer-backdrop" }, dialog);
  setChildren(root, backdrop);
  document.body.classList.add("viewer-open");
  for (const el of inertTargets) el.inert = true;

  function applyDisplay() {
    const hasHeat = Boolean(heatmapUrl(current));
    heat.hidden = !(prefs.heatmap && hasHeat && !heat.classList.contains("broken"));
    heat.style.opacity = String(prefs.opacity / 100);
    opacityValue.textContent = `${prefs.opacity} %`;
    opacity.disabled = !prefs.heatmap || !hasHeat;
    heatToggle.disabled = !hasHeat;
    const bbox = current && current.result && Array.isArray(current.result.bbox) ? current.result.bbox : null;
    boxToggle.disabled = !bbox;
    box.hidden = !(prefs.box && bbox);
    if (bbox) {
      const [x0, y0, x1, y1] = bbox.map((v) => Math.max(0, Math.min(1, Number(v))));
      Object.assign(box.style, {
        left: `${x0 * 100}%`, top: `${y0 * 100}%`,
        width: `${Math.max(0, x1 - x0) * 100}%`, height: `${Math.max(0, y1 - y0) * 100}%`,
      });
    }
    dialog.dataset.heatmap = heat.hidden ? "off" : "on";
  }

  heatToggle.addEventListener("change", () => { prefs.heatmap = heatToggle.checked; applyDisplay(); });
  opacity.addEventListener("input", () => { prefs.opacity = Number(opacity.value); applyDisplay(); });
  boxToggle.addEventListener("change", () => { prefs.box = boxToggle.checked; applyDisplay(); });

  function renderDetails(image) {
    const r = image.result;
    const parts = [h("div", { class: "viewer-badges" }, imageBadge(image))];
    if (r && r.scope === "out_of_scope") parts.push(scopeNote(r));
    if (r && r.label_withheld) {
      parts.push(h("p", { class: "muted small" },
        "The models were validated on frontal paediatric chest X-rays only, so no pneumonia label is given for this image. A hospital admin can switch the hospital to label such images with a warning."));
    } else if (r) {
      parts.push(
        h("p", { class: "score-line" },
          h("span", { class: "score-big" }, formatPercent(r.score, 1)), " ",
          h("span", { class: "muted" }, "probability of pneumonia")),
        h("p", { class: "muted small", id: "viewer-threshold" },
          `Decision threshold ${formatPercent(r.threshold, 1)} — images at or above it are labelled pneumonia.`),
        h("h3", {}, "Probabilities per class"),
        probabilityRows(r.probabilities, r.label, "cls"));
      const etiology = r.etiology_probabilities || {};
      if (Object.keys(etiology).length) {
        parts.push(h("h3", {}, "Etiology"),
          r.label !== "pneumonia"
            ? h("p", { class: "muted small" }, "Shown for reference; etiology applies to pneumonia-positive images.")
            : null,
          probabilityRows(etiology, r.etiology_label, "eti"));
      }
    } else if (image.status === "failed") {
      parts.push(h("p", { class: "form-error" }, image.error || "The image could not be analysed."));
    } else if (image.status === "cancelled") {
      parts.push(h("p", { class: "muted" }, "The study was cancelled before this image was analysed."));
    } else {
      parts.push(h("p", { class: "muted" }, "Analysis in progress…"));
    }
    if (image.flags && image.flags.length) {
      parts.push(h("div", { class: "viewer-flags", role: "note" },
        h("h3", {}, "Warnings"),
        h("ul", { class: "flags" }, image.flags.map((flag) => h("li", { class: "flag" }, "⚠ ", flagText(flag)))),
        h("p", { class: "small" }, FLAG_HELP)));
    }
    if (image.notes && image.notes.length) {
      parts.push(h("h3", {}, "Notes"), h("ul", { class: "notes small" }, image.notes.map((note) => h("li", {}, note))));
    }
    const dims = image.width && image.height ? `${image.width} × ${image.height}` : "";
    parts.push(h("h3", {}, "Image"), h("dl", { class: "info-list", id: "viewer-info" },
      info("File", image.original_name),
      info("Format", image.format ? image.format.toUpperCase() : ""),
      info("Size", dims),
      info("View", image.view_position),
      info("Body part", image.body_part),
      info("Patient age", image.patient_age),
      info("Patient sex", image.patient_sex),
      r ? info("Model", `${r.model_name} · version ${r.model_version}`) : null));
    setChildren(details, ...parts);
  }

  function show(id) {
    const list = images();
    const image = list.find((i) => i.id === id) || null;
    if (!image) return;
    const changed = !current || current.id !== id;
    current = image;
    const index = list.indexOf(image);
    titleEl.textContent = image.original_name;
    counter.textContent = `${index + 1} of ${list.length}`;
    prevBtn.disabled = index <= 0;
    nextBtn.disabled = index >= list.length - 1;
    if (changed) {
      xray.src = image.preview_url || urls.preview(image.id);
      xray.alt = `Chest X-ray ${image.original_name}`;
      heat.classList.remove("broken");
      heat.removeAttribute("src");
      // Preload the neighbours so that arrow navigation feels instant.
      for (const n of [list[index - 1], list[index + 1]]) if (n) new Image().src = urls.preview(n.id);
    }
    if (heatmapUrl(image) && !heat.getAttribute("src")) heat.src = heatmapUrl(image);
    stageNote.textContent = image.result ? "" : image.status === "failed" ? "Analysis failed" : "Awaiting analysis";
    stageNote.hidden = Boolean(image.result);
    renderDetails(image);
    applyDisplay();
    if (changed) fit();
    if (changed && !dialog.contains(document.activeElement)) dialog.focus();
  }

  // Fit the frame (X-ray, heatmap and box share it) to the stage, keeping the aspect ratio.
  function fit() {
    const width = xray.naturalWidth || (current && current.width) || 1;
    const height = xray.naturalHeight || (current && current.height) || 1;
    const room = stage.getBoundingClientRect();
    const scale = Math.max(0.05, Math.min((room.width - 32) / width, (room.height - 32) / height));
    frame.style.width = `${Math.floor(width * scale)}px`;
    frame.style.height = `${Math.floor(height * scale)}px`;
  }
  const resize = new ResizeObserver(fit);
  resize.observe(stage);
  xray.addEventListener("load", fit);

  heat.addEventListener("error", () => { heat.classList.add("broken"); applyDisplay(); });

  function step(delta) {
    const list = images();
    const index = list.findIndex((i) => i.id === (current && current.id));
    const next = list[index + delta];
    if (!next) return;
    show(next.id);
    onNavigate(next.id);
  }

  function onKey(event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
    const tag = event.target.tagName;
    const typing = (tag === "INPUT" && event.target.type !== "checkbox") || tag === "SELECT" || tag === "TEXTAREA";
    if (event.key === "Escape") {
      event.preventDefault();
      onClose();
    } else if (event.key === "ArrowRight" && !typing) {
      event.preventDefault();
      step(1);
    } else if (event.key === "ArrowLeft" && !typing) {
      event.preventDefault();
      step(-1);
    }
  }
  document.addEventListener("keydown", onKey);
  prevBtn.addEventListener("click", () => step(-1));
  nextBtn.addEventListener("click", () => step(1));
  closeBtn.addEventListener("click", () => onClose());
  backdrop.addEventListener("click", (event) => { if (event.target === backdrop) onClose(); });

  return {
    show,
    currentId: () => (current ? current.id : null),
    update() {
      if (current) show(current.id);
    },
    destroy() {
      document.removeEventListener("keydown", onKey);
      resize.disconnect();
      for (const el of inertTargets) el.inert = false;
      document.body.classList.remove("viewer-open");
      setChildren(root);
      if (previousFocus && previousFocus.isConnected) previousFocus.focus();
    },
  };
}
