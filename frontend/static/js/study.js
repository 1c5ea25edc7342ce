// The study page: progress, actions, and a grid of thumbnails with labels and probabilities.
import { api, poller, urls } from "./api.js";
import { append, formatDate, formatPercent, h, progressBar, setChildren, svgIcon, toast } from "./dom.js";
import {
  ACTIVE_STATUSES, FLAG_HELP, flagChips, flagText, imageBadge, priorityBadge, scopeMessage, scopeNote,
  statusBadge,
  studyProgress, studyTitle,
} from "./labels.js";
import { REPORT_KEY } from "./upload.js";
import { createViewer } from "./viewer.js";

const viewState = new Map(); // study id -> {sort, pneumoniaOnly, flaggedOnly}, kept while the tab lives

function notFound(main) {
  setChildren(main, h("section", { class: "page" },
    h("div", { class: "card notice-card", role: "alert", id: "not-found" },
      h("h1", {}, "Study not found"),
      h("p", {}, "This study does not exist, or it belongs to another hospital."),
      h("a", { class: "btn", href: "#/studies" }, "← Back to your studies"))));
}

function uploadReport(studyId) {
  let report = null;
  try {
    report = JSON.parse(sessionStorage.getItem(REPORT_KEY(studyId)) || "null");
  } catch {
    report = null;
  }
  if (!report) return null;
  const rejected = report.rejected || [];
  const panel = h("section", {
    class: `card upload-report ${rejected.length ? "has-rejections" : ""}`, id: "upload-report",
    "aria-labelledby": "upload-report-title",
  });
  const dismiss = h("button", { type: "button", class: "icon-btn", "aria-label": "Dismiss upload report", title: "Dismiss" }, svgIcon("close"));
  dismiss.addEventListener("click", () => {
    sessionStorage.removeItem(REPORT_KEY(studyId));
    panel.remove();
  });
  const accepted = `${report.accepted} ${report.accepted === 1 ? "file" : "files"} accepted`;
  // The dom helper, not Element.append: the native one writes an absent part as "null".
  append(panel, [
    h("div", { class: "upload-report-head" },
      h("h2", { id: "upload-report-title" }, "Upload received"),
      dismiss),
    h("p", {}, rejected.length
      ? `${accepted}, ${rejected.length} rejected. The rejected files were not stored:`
      : `${accepted}. The images are checked as they are analysed; any that cannot be read are marked rejected below.`),
    report.error ? h("p", { class: "form-error", role: "alert" }, `Part of the upload failed: ${report.error}`) : null,
    rejected.length
      ? h("ul", { class: "rejections", id: "rejections", role: "alert" },
        rejected.map((r) => h("li", {},
          h("span", { class: "rejected-name" }, r.name),
          h("span", { class: "rejected-reason" }, r.reason))))
      : null]);
  return panel;
}

function probabilityOf(image) {
  return image.result && typeof image.result.score === "number" ? image.result.score : null;
}

export function studyView(main, { studyId, imageId, navigate }) {
  const state = viewState.get(studyId) || { sort: "upload", pneumoniaOnly: false, flaggedOnly: false };
  viewState.set(studyId, state);
  let study = null;
  let images = [];
  let visible = [];
  const cards = new Map();
  let viewer = null;
  let pendingImage = imageId || null;
  let built = false;

  setChildren(main, h("section", { class: "page" }, h("p", { class: "muted loading" }, "Loading study…")));

  // Elements created once the study is known (never before: a foreign study shows nothing).
  const title = h("h1", { id: "study-title" });
  const meta = h("p", { class: "study-meta muted" });
  const statusSlot = h("span");
  const bar = progressBar("Study progress", { size: "progress-lg" });
  bar.el.id = "study-progress";
  const barText = h("span", { class: "progress-text", id: "study-progress-text" });
  const counts = h("dl", { class: "counts" });
  const cancelBtn = h("button", { type: "button", class: "btn btn-danger-outline", id: "cancel-study", hidden: true }, svgIcon("stop"), "Cancel");
  const retryBtn = h("button", { type: "button", class: "btn", id: "retry-failed", hidden: true }, svgIcon("retry"), "Retry failed");
  const csvLink = h("a", { class: "btn", id: "export-csv", href: urls.exportCsv(studyId), download: "" }, svgIcon("download"), "CSV");
  const jsonLink = h("a", { class: "btn", id: "export-json", href: urls.exportJson(studyId), download: "" }, svgIcon("download"), "JSON");
  const sortSelect = h("select", { id: "grid-sort", name: "sort" },
    h("option", { value: "upload" }, "Upload order"),
    h("option", { value: "prob-desc" }, "Pneumonia probability: high to low"),
    h("option", { value: "prob-asc" }, "Pneumonia probability: low to high"));
  sortSelect.value = state.sort;
  const pneumoniaOnly = h("input", { type: "checkbox", id: "filter-pneumonia", checked: state.pneumoniaOnly });
  const flaggedOnly = h("input", { type: "checkbox", id: "filter-flagged", checked: state.flaggedOnly });
  const shown = h("span", { class: "muted small", "aria-live": "polite", id: "grid-count" });
  const grid = h("ul", { class: "image-grid", id: "image-grid", "aria-label": "Images of this study" });
  const gridEmpty = h("p", { class: "empty", hidden: true });

  function build() {
    built = true;
    setChildren(main, h("section", { class: "page", "aria-labelledby": "study-title" },
      h("a", { class: "back", href: "#/studies" }, "← All studies"),
      h("div", { class: "page-head study-head" },
        h("div", { class: "study-head-text" }, h("div", { class: "title-row" }, title, statusSlot), meta),
        h("div", { class: "actions", role: "group", "aria-label": "Study actions" },
          h("span", { class: "actions-label muted small" }, "Export"), csvLink, jsonLink, retryBtn, cancelBtn)),
      uploadReport(studyId),
      h("div", { class: "card study-progress" },
        h("div", { class: "progress-row" }, bar.el, barText),
        counts),
      h("div", { class: "grid-toolbar" },
        h("div", { class: "field inline" }, h("label", { for: sortSelect.id }, "Sort"), sortSelect),
        h("label", { class: "check", for: pneumoniaOnly.id }, pneumoniaOnly, "Pneumonia only"),
        h("label", { class: "check", for: flaggedOnly.id }, flaggedOnly, "Flagged only"),
        shown),
      grid,
      gridEmpty));
  }

  function count(label, value, kind) {
    return h("div", { class: `count-box count-${kind}` }, h("dt", {}, label), h("dd", {}, String(value)));
  }

  function renderStudy() {
    const p = studyProgress(study);
    title.textContent = studyTitle(study);
    document.title = `${studyTitle(study)} · PneumoScan`;
    setChildren(statusSlot, statusBadge(study.status));
    setChildren(meta,
      priorityBadge(study.priority), " ",
      study.accession_number ? `Accession ${study.accession_number} · ` : "",
      `Created ${formatDate(study.created_at)}`,
      study.finished_at ? ` · Finished ${formatDate(study.finished_at)}` : "");
    const text = `${p.finished} of ${p.total} images processed · ${Math.round(p.fraction * 100)} %`;
    bar.set(p.fraction, text);
    bar.el.dataset.state = study.status;
    barText.textContent = text;
    setChildren(counts,
      count("Pneumonia", p.pneumonia, "pneumonia"),
      count("Normal", p.normal, "normal"),
      p.out_of_scope ? count("Out of scope", p.out_of_scope, "out-of-scope") : null,
      count("Failed", p.failed, "failed"),
      count("Rejected", p.rejected, "failed"),
      count("Pending", ACTIVE_STATUSES.has(study.status) ? p.pending : 0, "pending"));
    const active = ACTIVE_STATUSES.has(study.status);
    cancelBtn.hidden = !active;
    retryBtn.hidden = active || p.failed === 0;
  }

  function cardFor(image) {
    let card = cards.get(image.id);
    if (!card) {
      const img = h("img", { src: urls.preview(image.id), alt: "", loading: "lazy", decoding: "async" });
      img.addEventListener("error", () => img.classList.add("broken"), { once: true });
      const link = h("a", { class: "card-link", href: `#/studies/${studyId}/images/${image.id}` });
      const body = h("div", { class: "card-body" });
      card = { li: h("li", { class: "image-card", dataset: { imageId: image.id } }), link, img, body, key: "" };
      link.append(h("div", { class: "thumb" }, img), body);
      card.li.append(link);
      cards.set(image.id, card);
    }
    const key = JSON.stringify([image.status, image.result && image.result.score, image.flags, image.error]);
    if (key !== card.key) {
      card.key = key;
      const score = probabilityOf(image);
      const probability = score === null ? null
        : h("span", { class: "prob", title: "Calibrated probability of pneumonia" }, formatPercent(score));
      setChildren(card.body,
        h("div", { class: "card-badges" }, imageBadge(image), probability),
        scopeNote(image.result),
        flagChips(image.flags),
        image.status === "failed" && image.error ? h("p", { class: "card-error small" }, image.error) : null,
        h("p", { class: "file-name small", title: image.original_name }, image.original_name));
      card.li.dataset.status = image.status;
      card.li.dataset.label = image.result ? image.result.label : "";
      card.li.classList.toggle("flagged", Boolean(image.flags && image.flags.length));
      const label = !image.result ? image.status
        : image.result.label_withheld ? scopeMessage(image.result)
          : `${image.result.label}, ${formatPercent(score)}`;
      const flags = (image.flags || []).map(flagText).join(", ");
      card.link.setAttribute("aria-label", `${image.original_name}: ${label}${flags ? `; warnings: ${flags}` : ""}`);
      card.link.title = flags ? FLAG_HELP : "";
    }
    return card;
  }

  function renderGrid() {
    visible = images.filter((image) =>
      (!state.pneumoniaOnly || (image.result && image.result.label === "pneumonia"))
      && (!state.flaggedOnly || (image.flags && image.flags.length)));
    if (state.sort !== "upload") {
      const sign = state.sort === "prob-desc" ? -1 : 1;
      visible = visible
        .map((image, index) => ({ image, index, p: probabilityOf(image) }))
        .sort((a, b) => {
          if (a.p === null || b.p === null) return (a.p === null) - (b.p === null) || a.index - b.index;
          return sign * (a.p - b.p) || a.index - b.index;
        })
        .map((x) => x.image);
    }
    const ids = new Set(images.map((i) => i.id));
    for (const [id, card] of cards) if (!ids.has(id)) { card.li.remove(); cards.delete(id); }
    setChildren(grid, ...visible.map((image) => cardFor(image).li));
    shown.textContent = `Showing ${visible.length} of ${images.length} images`;
    gridEmpty.hidden = visible.length > 0;
    gridEmpty.textContent = images.length ? "No image matches these filters." : "This study has no images.";
  }

  let lastKey = "";
  async function load() {
    let body;
    try {
      body = await api(urls.study(studyId));
    } catch (error) {
      if (error.status === 404 || error.status === 400) {
        closeViewer(false);
        notFound(main);
        return { active: false, changed: false };
      }
      if (!built) {
        setChildren(main, h("section", { class: "page" },
          h("p", { class: "form-error", role: "alert" }, `Could not load the study: ${error.message}`)));
      }
      throw error;
    }
    study = body;
    images = body.images || [];
    if (!built) build();
    renderStudy();
    renderGrid();
    if (viewer) viewer.update(images);
    if (pendingImage) {
      const id = pendingImage;
      pendingImage = null;
      openViewer(id);
    }
    const key = JSON.stringify([body.status, body.progress]);
    const changed = key !== lastKey;
    lastKey = key;
    return { active: ACTIVE_STATUSES.has(body.status), changed };
  }

  const poll = poller(load, { base: 1000, max: 10000 });

  function orderedForViewer() {
    return visible.length ? visible : images;
  }

  function openViewer(id) {
    if (!study) {
      pendingImage = id;
      return;
    }
    if (!images.some((i) => i.id === id)) {
      closeViewer(false);
      toast("This image is not part of the study.", "error");
      history.replaceState(null, "", `#/studies/${studyId}`);
      return;
    }
    if (!viewer) {
      viewer = createViewer({
        images: orderedForViewer,
        onNavigate: (nextId) => history.replaceState(null, "", `#/studies/${studyId}/images/${nextId}`),
        onClose: () => navigate(`#/studies/${studyId}`),
      });
    }
    viewer.show(id);
  }

  function closeViewer(restoreFocus = true) {
    if (!viewer) return;
    const last = viewer.currentId();
    viewer.destroy();
    viewer = null;
    if (restoreFocus && last && cards.has(last)) cards.get(last).link.focus();
  }

  sortSelect.addEventListener("change", () => { state.sort = sortSelect.value; renderGrid(); });
  pneumoniaOnly.addEventListener("change", () => { state.pneumoniaOnly = pneumoniaOnly.checked; renderGrid(); });
  flaggedOnly.addEventListener("change", () => { state.flaggedOnly = flaggedOnly.checked; renderGrid(); });

  cancelBtn.addEventListener("click", async () => {
    if (!window.confirm("Cancel this study? Images not analysed yet will be skipped.")) return;
    cancelBtn.disabled = true;
    try {
      await api(urls.cancel(studyId), { method: "POST" });
      toast("Study cancelled.");
    } catch (error) {
      toast(`Could not cancel: ${error.message}`, "error");
    } finally {
      cancelBtn.disabled = false;
      poll.now();
    }
  });
  retryBtn.addEventListener("click", async () => {
    retryBtn.disabled = true;
    try {
      await api(urls.retry(studyId), { method: "POST" });
      toast("Failed images queued again.");
    } catch (error) {
      toast(`Could not retry: ${error.message}`, "error");
    } finally {
      retryBtn.disabled = false;
      poll.now();
    }
  });

  poll.now();

  return {
    setImage(id) {
      if (id) openViewer(id);
      else closeViewer(true);
    },
    destroy() {
      poll.destroy();
      closeViewer(false);
      document.title = "PneumoScan";
    },
  };
}
