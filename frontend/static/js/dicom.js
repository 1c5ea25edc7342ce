// DICOM settings of the hospital (admins): which modalities / PACS may send studies (calling
// AE titles) and where the results go (a destination AE, or a DICOMweb URL).
import { api } from "./api.js";
import { h, setChildren, toast } from "./dom.js";

function field(label, input, hint) {
  return h("div", { class: "field" },
    h("label", { for: input.id }, label), input, hint ? h("p", { class: "hint" }, hint) : null);
}

function titlesFrom(text) {
  return text.split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
}

export function dicomSettingsView(main, { me }) {
  if (!me || me.role !== "admin") {
    setChildren(main, h("section", { class: "page" },
      h("div", { class: "card notice-card", role: "alert", id: "not-admin" },
        h("h1", {}, "DICOM settings"),
        h("p", {}, "Only an admin of your hospital can change its DICOM settings."))));
    return () => {};
  }
  const controller = new AbortController();
  const error = h("p", { class: "form-error", role: "alert", id: "dicom-error" });
  const titles = h("input", { id: "dicom-calling", name: "calling", autocomplete: "off",
    placeholder: "CR_ROOM_1, PACS" });
  const aeTitle = h("input", { id: "dicom-dest-ae", name: "ae_title", maxlength: "16", autocomplete: "off" });
  const host = h("input", { id: "dicom-dest-host", name: "host", autocomplete: "off" });
  const port = h("input", { id: "dicom-dest-port", name: "port", type: "number", min: "1", max: "65535" });
  const dicomweb = h("input", { id: "dicom-web-url", name: "dicomweb_url", type: "url", autocomplete: "off",
    placeholder: "https://pacs.example.org/dicom-web" });
  const save = h("button", { type: "submit", class: "btn btn-primary" }, "Save DICOM settings");
  const form = h("form", { class: "stack card settings-card", id: "dicom-form" },
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

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const anyDestination = aeTitle.value.trim() || host.value.trim() || port.value.trim();
    const body = {
      calling_ae_titles: titlesFrom(titles.value),
      destination: anyDestination
        ? { ae_title: aeTitle.value.trim(), host: host.value.trim(), port: Number(port.value) }
        : null,
      dicomweb_url: dicomweb.value.trim() || null,
    };
    save.disabled = true;
    try {
      fill(await api("/api/hospital/dicom/", { method: "PUT", json: body, signal: controller.signal }));
      toast("DICOM settings saved.", "success");
    } catch (err) {
      if (err.name !== "AbortError") error.textContent = err.message || "Could not save.";
    } finally {
      save.disabled = false;
    }
  });

  setChildren(main, h("section", { class: "page settings-page" },
    h("h1", {}, "DICOM settings"),
    h("p", { class: "muted" },
      `PneumoScan listens as AE title PNEUMOSCAN (see the conformance statement, docs/dicom.md).`),
    form));
  api("/api/hospital/dicom/", { signal: controller.signal }).then(fill).catch((err) => {
    if (err.name !== "AbortError") error.textContent = err.message || "Could not load the settings.";
  });
  return () => controller.abort();
}
