// The studies page: every study of the hospital, with live progress, filters and search.
import { api, poller, urls } from "./api.js";
import { formatDate, h, progressBar, setChildren, svgIcon } from "./dom.js";
import { ACTIVE_STATUSES, priorityBadge, statusBadge, studyProgress, studyTitle } from "./labels.js";

const STATUS_OPTIONS = [
  ["", "All statuses"], ["queued", "Queued"], ["processing", "Processing"], ["done", "Done"],
  ["done_with_errors", "Done with errors"], ["failed", "Failed"], ["cancelled", "Cancelled"],
];
const PRIORITY_OPTIONS = [["", "All priorities"], ["routine", "Routine"], ["urgent", "Urgent"]];

function select(id, name, options, value) {
  return h("select", { id, name },
    options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
}

export function findingsCell(progress) {
  return h("div", { class: "findings" },
    h("span", { class: "count count-pneumonia", title: "Pneumonia" },
      h("b", {}, String(progress.pneumonia)), " pneumonia"),
    h("span", { class: "count count-normal", title: "Normal" },
      h("b", {}, String(progress.normal)), " normal"),
    progress.out_of_scope
      ? h("span", { class: "count count-out-of-scope", title: "Outside the validated population" },
        h("b", {}, String(progress.out_of_scope)), " out of scope")
      : null,
    progress.failed
      ? h("span", { class: "count count-failed", title: "Failed" }, h("b", {}, String(progress.failed)), " failed")
      : null,
    progress.rejected
      ? h("span", { class: "count count-failed", title: "Rejected by their content" }, h("b", {}, String(progress.rejected)), " rejected")
      : null);
}

function progressText(progress) {
  return `${progress.finished} / ${progress.total} · ${Math.round(progress.fraction * 100)} %`;
}

export function studiesView(main, { query }) {
  const params = new URLSearchParams(query);
  const filters = {
    search: params.get("search") || "",
    status: params.get("status") || "",
    priority: params.get("priority") || "",
    page: Math.max(1, Number(params.get("page")) || 1),
  };

  const search = h("input", {
    id: "study-search", name: "search", type: "search", value: filters.search,
    placeholder: "Name or accession number", autocomplete: "off",
  });
  const status = select("study-status", "status", STATUS_OPTIONS, filters.status);
  const priority = select("study-priority", "priority", PRIORITY_OPTIONS, filters.priority);
  const filterForm = h("form", { class: "filters", role: "search", "aria-label": "Filter studies" },
    h("div", { class: "field grow" }, h("label", { for: search.id }, "Search"), search),
    h("div", { class: "field" }, h("label", { for: status.id }, "Status"), status),
    h("div", { class: "field" }, h("label", { for: priority.id }, "Priority"), priority));

  const tbody = h("tbody");
  const table = h("table", { class: "studies-table" },
    h("caption", { class: "sr-only" }, "Studies of your hospital"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Study"), h("th", { scope: "col" }, "Priority"),
      h("th", { scope: "col" }, "Status"), h("th", { scope: "col", class: "col-progress" }, "Progress"),
      h("th", { scope: "col" }, "Findings"), h("th", { scope: "col" }, "Created"))),
    tbody);
  const empty = h("div", { class: "empty", hidden: true });
  const summary = h("p", { class: "muted summary", "aria-live": "polite" });
  const prev = h("button", { type: "button", class: "btn", disabled: true }, "Previous");
  const next = h("button", { type: "button", class: "btn", disabled: true }, "Next");
  const pageInfo = h("span", { class: "muted" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages", hidden: true }, prev, pageInfo, next);

  setChildren(main, h("section", { class: "page", "aria-labelledby": "studies-title" },
    h("div", { class: "page-head" },
      h("div", {}, h("h1", { id: "studies-title" }, "Studies"), summary),
      h("a", { class: "btn btn-primary", href: "#/upload" }, svgIcon("upload"), "New upload")),
    filterForm,
    h("div", { class: "card table-card" }, h("div", { class: "table-scroll" }, table), empty),
    pager));

  const rows = new Map();

  function rowFor(study) {
    let row = rows.get(study.id);
    if (!row) {
      const link = h("a", { class: "study-link", href: `#/studies/${study.id}` });
      const accession = h("span", { class: "muted small" });
      const bar = progressBar("Progress");
      const barText = h("span", { class: "progress-text" });
      row = {
        tr: h("tr", { dataset: { studyId: study.id } }),
        link, accession, bar, barText,
        cells: {
          title: h("td", { class: "col-study" }, link, h("br"), accession),
          priority: h("td"), status: h("td"),
          progress: h("td", { class: "col-progress" }, h("div", { class: "progress-cell" }, bar.el, barText)),
          findings: h("td"), created: h("td", { class: "nowrap muted" }),
        },
        key: "",
      };
      row.tr.append(...Object.values(row.cells));
      row.tr.addEventListener("click", (event) => {
        if (event.target.closest("a, button")) return;
        location.hash = `#/studies/${study.id}`;
      });
      rows.set(study.id, row);
    }
    const progress = studyProgress(study);
    const key = JSON.stringify([study.name, study.accession_number, study.priority, study.status, study.progress]);
    if (key !== row.key) {
      row.key = key;
      row.link.textContent = studyTitle(study);
      row.accession.textContent = study.accession_number ? `Accession ${study.accession_number}` : "No accession number";
      setChildren(row.cells.priority, priorityBadge(study.priority));
      setChildren(row.cells.status, statusBadge(study.status));
      row.bar.el.setAttribute("aria-label", `Progress of ${studyTitle(study)}`);
      row.bar.set(progress.fraction, progressText(progress));
      row.bar.el.dataset.state = study.status;
      row.barText.textContent = progressText(progress);
      setChildren(row.cells.findings, findingsCell(progress));
      row.cells.created.textContent = formatDate(study.created_at);
      row.tr.dataset.status = study.status;
    }
    return row;
  }

  let lastKey = "";
  let requestSeq = 0;

  async function load() {
    const seq = ++requestSeq;
    const q = new URLSearchParams();
    for (const key of ["status", "priority", "search"]) if (filters[key]) q.set(key, filters[key]);
    if (filters.page > 1) q.set("page", String(filters.page));
    let body;
    try {
      body = await api(urls.studies(q.toString()));
    } catch (error) {
      if (error.status === 404 && filters.page > 1) {
        filters.page = 1;
        syncUrl();
        return load();
      }
      if (seq === requestSeq) {
        summary.textContent = `Could not load the studies: ${error.message}`;
      }
      throw error;
    }
    if (seq !== requestSeq) return { active: true, changed: false };
    const results = body.results || [];
    const seen = new Set();
    const ordered = results.map((study) => {
      seen.add(study.id);
      return rowFor(study).tr;
    });
    for (const [id, row] of rows) if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    setChildren(tbody, ...ordered);

    const filtered = filters.search || filters.status || filters.priority;
    empty.hidden = results.length > 0;
    table.hidden = results.length === 0;
    setChildren(empty, filtered
      ? h("p", {}, "No study matches these filters.")
      : h("div", {}, h("p", {}, "No studies yet."),
        h("a", { class: "btn btn-primary", href: "#/upload" }, svgIcon("upload"), "Upload the first study")));
    summary.textContent = `${body.count} ${body.count === 1 ? "study" : "studies"}${filtered ? " match" : ""}`;
    pager.hidden = !body.next && !body.previous;
    prev.disabled = !body.previous;
    next.disabled = !body.next;
    pageInfo.textContent = `Page ${filters.page}`;

    const key = JSON.stringify(results.map((s) => [s.id, s.status, s.progress]));
    const changed = key !== lastKey;
    lastKey = key;
    return { active: results.some((s) => ACTIVE_STATUSES.has(s.status)), changed };
  }

  const poll = poller(load, { base: 1000, max: 15000 });

  function syncUrl() {
    const q = new URLSearchParams();
    for (const key of ["search", "status", "priority"]) if (filters[key]) q.set(key, filters[key]);
    if (filters.page > 1) q.set("page", String(filters.page));
    const hash = `#/studies${q.toString() ? `?${q}` : ""}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  function refilter() {
    filters.page = 1;
    syncUrl();
    poll.now();
  }

  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      filters.search = search.value.trim();
      refilter();
    }, 300);
  });
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(debounce);
    filters.search = search.value.trim();
    refilter();
  });
  status.addEventListener("change", () => { filters.status = status.value; refilter(); });
  priority.addEventListener("change", () => { filters.priority = priority.value; refilter(); });
  prev.addEventListener("click", () => { filters.page = Math.max(1, filters.page - 1); syncUrl(); poll.now(); });
  next.addEventListener("click", () => { filters.page += 1; syncUrl(); poll.now(); });

  poll.now();
  return () => {
    clearTimeout(debounce);
    poll.destroy();
  };
}
