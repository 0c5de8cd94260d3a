// The compare form: model B only for two-sided kinds, layers/examples only for the kinds they apply to (the server
// lists them on the kind's <select>: data-one, data-sized, data-layers, data-measures).
(function () {
  "use strict";
  function ready() {
    var kind = document.getElementById("kind");
    if (!kind) return;
    function listed(name) { return (kind.getAttribute("data-" + name) || "").split(" ").indexOf(kind.value) >= 0; }
    function update() {
      document.getElementById("model_b_label").hidden = listed("one");
      document.getElementById("layers_label").hidden = !listed("layers");
      document.getElementById("examples_label").hidden = !listed("sized");
      document.getElementById("measures_label").hidden = !listed("measures");
    }
    kind.addEventListener("change", update);
    update();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready); else ready();
})();
