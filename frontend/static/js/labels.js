// Human wording for API codes, shared by the pages.
import { h } from "./dom.js";

export const ACTIVE_STATUSES = new Set(["queued", "processing"]);

const STUDY_STATUS = {
  queued: "Queued",
  processing: "Processing",
  done: "Done",
  done_with_errors: "Done with errors",
  failed: "Failed",
  cancelled: "Cancelled",
};

const IMAGE_STATUS = {
  queued: "Queued",
  processing: "Analysing",
  done: "Done",
  failed: "Failed",
  rejected: "Rejected",
  cancelled: "Cancelled",
};

export const ROLE_LABEL = { admin: "Hospital admin", clinician: "Clinician" };

export function statusLabel(status) {
  return STUDY_STATUS[status] || status;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, statusLabel(status));
}

export function priorityBadge(priority) {
  if (priority === "urgent") return h("span", { class: "badge priority-urgent" }, "Urgent");
  return h("span", { class: "badge priority-routine" }, "Routine");
}

export function classLabel(name) {
  const text = String(name || "").replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** The badge of one image: its label when finished, its state otherwise. */
export function imageBadge(image) {
  if (image.result && image.result.label_withheld) {
    return h("span", { class: "badge label-out-of-scope", "data-label": "not_analysed",
      title: scopeMessage(image.result) }, "Not analysed");
  }
  if (image.result) {
    const label = image.result.label;
    const kind = label === "pneumonia" ? "pneumonia" : label === "normal" ? "normal" : "other";
    return h("span", { class: `badge label-${kind}`, "data-label": label }, classLabel(label));
  }
  return h("span", { class: `badge image-${image.status}` }, IMAGE_STATUS[image.status] || image.status);
}

/** "Not analysed — adult chest X-ray (outside the validated population)", or the warning
 *  of a labelled out-of-scope image (hospital in "warn" mode); null when in scope. */
export function scopeMessage(result) {
  if (!result || result.scope !== "out_of_scope") return null;
  const why = result.scope_text || "outside the validated population";
  return result.label_withheld ? `Not analysed — ${why}` : `Outside the validated population: ${why}`;
}

export function scopeNote(result) {
  const message = scopeMessage(result);
  if (!message) return null;
  return h("p", { class: `scope-note ${result.label_withheld ? "withheld" : "warned"}`, role: "note" },
    result.label_withheld ? "" : "⚠ ", message);
}

export function flagText(flag) {
  const [code, detail] = String(flag).split(":", 2);
  switch (code) {
    case "non_chest":
      return detail ? `Not a chest X-ray (${detail})` : "Not a chest X-ray";
    case "adult_patient":
      return "Adult patient";
    case "lateral_view":
      return "Lateral view";
    case "body_part_unknown":
      return "Body part not recorded";
    case "unexpected_modality":
      return detail ? `Unexpected modality (${detail.toUpperCase()})` : "Unexpected modality";
    default:
      return classLabel(code) + (detail ? ` (${detail})` : "");
  }
}

export const FLAG_HELP =
  "The models were validated on frontal paediatric chest X-rays; read this result with caution.";

export function flagChips(flags) {
  if (!flags || !flags.length) return null;
  return h("ul", { class: "flags", "aria-label": "Warnings" },
    flags.map((flag) => h("li", { class: "flag", title: FLAG_HELP }, "⚠ ", flagText(flag))));
}

export function studyTitle(study) {
  return study.name || (study.accession_number ? `Accession ${study.accession_number}` : "Untitled study");
}

export function studyProgress(study) {
  const p = {
    total: 0, done: 0, failed: 0, rejected: 0, pneumonia: 0, out_of_scope: 0, not_analysed: 0,
    ...(study.progress || {}),
  };
  const finished = p.done + p.failed + p.rejected;
  const fraction = p.total ? finished / p.total : ACTIVE_STATUSES.has(study.status) ? 0 : 1;
  return {
    ...p,
    finished,
    fraction,
    normal: Math.max(0, p.done - p.pneumonia - p.not_analysed),
    pending: Math.max(0, p.total - finished),
  };
}
