// Hover a heatmap cell: the two layer names and the value ± SE (from the cell's data attributes; the measure's name
// from the svg's data-measure, CKA by default) in #hover.
(function () {
  "use strict";
  function text(cell, measure) {
    var a = cell.getAttribute("data-a"), b = cell.getAttribute("data-b");
    var cka = parseFloat(cell.getAttribute("data-cka")), se = parseFloat(cell.getAttribute("data-se"));
    var value = isNaN(cka) ? "undefined" : cka.toFixed(4);
    var n = cell.getAttribute("data-n");  // a downsampled cell: the mean of n layer pairs
    var block = n ? " (mean of " + n + " pairs, " + cell.getAttribute("data-min") + " \u2026 " + cell.getAttribute("data-max") + ")" : "";
    return a + " \u00d7 " + b + ": " + measure + " " + value + (isNaN(se) ? "" : " \u00b1 " + se.toFixed(4)) + block;
  }
  function ready() {
    var svg = document.getElementById("heatmap"), hover = document.getElementById("hover");
    if (!svg || !hover) return;
    svg.addEventListener("mouseover", function (event) {
      var cell = event.target;
      if (cell && cell.classList && cell.classList.contains("cell")) hover.textContent = text(cell, svg.getAttribute("data-measure") || "CKA");
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready); else ready();
})();
