// DOM helpers. Server strings (file names, study names, reasons) are user input: they are
// only ever inserted as text nodes or attribute values, never parsed as HTML.

const PROPS = new Set(["value", "checked", "disabled", "hidden", "selected", "multiple", "indeterminate"]);

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace the children of `el`; null, undefined and false children are skipped. */
export function setChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

let uid = 0;
export const nextId = (prefix) => `${prefix}-${++uid}`;

export function svgIcon(name) {
  const paths = {
    upload: "M12 16V4m0 0-5 5m5-5 5 5M4 16v3a1 1 0 0 0 1 1h14a1 1 0 0 0 1-1v-3",
    download: "M12 4v12m0 0-5-5m5 5 5-5M4 20h16",
    close: "M6 6l12 12M18 6 6 18",
    left: "M15 5l-7 7 7 7",
    right: "M9 5l7 7-7 7",
    retry: "M4 12a8 8 0 0 1 14-5.3L20 9M20 4v5h-5M20 12a8 8 0 0 1-14 5.3L4 15M4 20v-5h5",
    stop: "M7 7h10v10H7z",
    warn: "M12 3 2 20h20L12 3Zm0 6v5m0 3v.5",
    folder: "M3 7a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V7Z",
    file: "M6 3h8l4 4v14H6V3Zm8 0v4h4",
    zip: "M6 3h8l4 4v14H6V3Zm4 0v2m0 2v2m0 2v2m-1 2h2v3h-2z",
  };
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.setAttribute("class", "icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", paths[name] || "");
  svg.append(path);
  return svg;
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function formatPercent(value, digits = 0) {
  return `${(value * 100).toFixed(digits)} %`;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
export function formatDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : dateFormat.format(date);
}

let toastTimer = null;
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("visible");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("visible"), 4000);
}

/** A labelled progress bar; returns {el, set(fraction, text)}. */
export function progressBar(label, { size = "" } = {}) {
  const bar = h("div", { class: "progress-fill" });
  const el = h("div", {
    class: `progress ${size}`.trim(), role: "progressbar", "aria-label": label,
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0",
  }, bar);
  return {
    el,
    set(fraction, valueText) {
      const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
      bar.style.width = `${pct}%`;
      el.setAttribute("aria-valuenow", String(pct));
      if (valueText) el.setAttribute("aria-valuetext", valueText);
    },
  };
}
