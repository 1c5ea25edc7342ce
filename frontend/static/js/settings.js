// Hospital settings (admins): what happens to images outside the validated population
// (scope mode), which modalities / PACS may send studies (calling AE titles) and where the
// results go (a destination AE, or a DICOMweb URL).
import { api } from "./api.js";
import { h, setChildren, toast } from "./dom.js";

function field(label, input, hint) {
  return h("div", { class: "field" },
    h("label", { for: input.id }, label), input, hint ? h("p", { class: "hint" }, hint) : null);
}

function titlesFrom(text) {
  return text.split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
}

// A form whose fields stay disabled until the stored values have been filled in: typing
// into a form that a late answer then overwrites would lose what was typed, and saving
// before it loaded would store blanks over the hospital's settings.
function settingsForm(id, ...children) {
  const fields = h("fieldset", { class: "stack", disabled: true }, ...children);
  return { form: h("form", { class: "stack card settings-card", id, "aria-busy": "true" }, fields), fields };
}

// Fetch the stored values into the form, then let it be used.
function load(parts, url, fill, error, signal) {
  api(url, { signal }).then((stored) => {
    fill(stored);
    parts.fields.disabled = false;
    parts.form.removeAttribute("aria-busy");
  }).catch((err) => {
    if (err.name !== "AbortError") error.textContent = err.message || "Could not load the settings.";
  });
}

async function submitting(button, errorEl, action) {
  errorEl.textContent = "";
  button.disabled = true;
  try {
    await action();
  } catch (err) {
    if (err.name !== "AbortError") errorEl.textContent = err.message || "Could not save.";
  } finally {
    button.disabled = false;
  }
}

function scopeSection(controller) {
  const error = h("p", { class: "form-error", role: "alert", id: "scope-error" });
  const option = (value, label, hint) => {
    const input = h("input", { type: "radio", name: "scope_mode", value, id: `scope-${value}` });
    return { input, el: h("div", { class: "field" },
      h("label", { class: "check", for: input.id }, input, label), h("p", { class: "hint" }, hint)) };
  };
  const enforce = option("enforce", "Withhold the label (recommended)",
    "Adult, lateral, inverted and non-chest images are marked “Not analysed” with the reason.");
  const warn = option("warn", "Show the label with a warning",
    "The model's answer is shown next to a warning that the image is outside the population it was validated on.");
  const save = h("button", { type: "submit", class: "btn btn-primary" }, "Save scope setting");
  const parts = settingsForm("scope-form",
    h("h2", {}, "Images outside the validated population"),
    h("p", { class: "muted" },
      "The model was validated on frontal paediatric chest X-rays. Other images are recognised and, by default, get no label."),
    enforce.el, warn.el, error, save);
  const fill = (s) => {
    enforce.input.checked = s.scope_mode === "enforce";
    warn.input.checked = s.scope_mode === "warn";
  };
  parts.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitting(save, error, async () => {
      const scope_mode = warn.input.checked ? "warn" : "enforce";
      fill(await api("/api/hospital/settings/", { method: "PATCH", json: { scope_mode }, signal: controller.signal }));
      toast("Scope setting saved.", "success");
    });
  });
  load(parts, "/api/hospital/settings/", fill, error, controller.signal);
  return parts.form;
}

function dicomSection(controller) {
  const error = h("p", { class: "form-error", role: "alert", id: "dicom-error" });
  const titles = h("input", { id: "dicom-calling", name: "calling", autocomplete: "off",
    placeholder: "CR_ROOM_1, PACS" });
  const aeTitle = h("input", { id: "dicom-dest-ae", name: "ae_title", maxlength: "16", autocomplete: "off" });
  const host = h("input", { id: "dicom-dest-host", name: "host", autocomplete: "off" });
  const port = h("input", { id: "dicom-dest-port", name: "port", type: "number", min: "1", max: "65535" });
  const dicomweb = h("input", { id: "dicom-web-url", name: "dicomweb_url", type: "url", autocomplete: "off",
    placeholder: "https://pacs.example.org/dicom-web" });
  const save = h("button", { type: "submit", class: "btn btn-primary" }, "Save DICOM settings");
  const parts = settingsForm("dicom-form",
    h("h2", {}, "Who may send studies"),
    field("Calling AE titles", titles,
      "AE titles of your modalities and PACS, separated by commas. Any other caller is refused."),
    h("h2", {}, "Where results go"),
    h("p", { class: "muted" },
      "A structured report per image and a heatmap image per classified image are sent into the same study."),
    field("Destination AE title", aeTitle),
    field("Destination host", host),
    field("Destination port", port),
    field("Or a DICOMweb URL (STOW-RS)", dicomweb, "Used when no destination AE is set."),
    error, save);

  function fill(config) {
    titles.value = config.calling_ae_titles.join(", ");
    aeTitle.value = config.destination ? config.destination.ae_title : "";
    host.value = config.destination ? config.destination.host : "";
    port.value = config.destination ? String(config.destination.port) : "";
    dicomweb.value = config.dicomweb_url || "";
  }

  parts.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const anyDestination = aeTitle.value.trim() || host.value.trim() || port.value.trim();
    const body = {
      calling_ae_titles: titlesFrom(titles.value),
      destination: anyDestination
        ? { ae_title: aeTitle.value.trim(), host: host.value.trim(), port: Number(port.value) }
        : null,
      dicomweb_url: dicomweb.value.trim() || null,
    };
    submitting(save, error, async () => {
      fill(await api("/api/hospital/dicom/", { method: "PUT", json: body, signal: controller.signal }));
      toast("DICOM settings saved.", "success");
    });
  });
  load(parts, "/api/hospital/dicom/", fill, error, controller.signal);
  return parts.form;
}

export function settingsView(main, { me }) {
  if (!me || me.role !== "admin") {
    setChildren(main, h("section", { class: "page" },
      h("div", { class: "card notice-card", role: "alert", id: "not-admin" },
        h("h1", {}, "Hospital settings"),
        h("p", {}, "Only an admin of your hospital can change its settings."))));
    return () => {};
  }
  const controller = new AbortController();
  setChildren(main, h("section", { class: "page settings-page" },
    h("h1", {}, "Hospital settings"),
    scopeSection(controller),
    h("h2", { class: "section-title" }, "DICOM"),
    h("p", { class: "muted" },
      "PneumoScan listens as AE title PNEUMOSCAN (see the conformance statement, docs/dicom.md)."),
    dicomSection(controller)));
  return () => controller.abort();
}
