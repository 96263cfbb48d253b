// Renders the site's math with the vendored KaTeX (docs/hooks.py). The guides' math comes from pymdownx.arithmatex
// as \( \) and \[ \] inside span/div.arithmatex; the notebook's markdown cells use $ and $$, which are read as math
// on the notebook page only (elsewhere a dollar sign is just a dollar sign). Code is never touched.
document.addEventListener("DOMContentLoaded", function () {
  var delimiters = [
    {left: "\\[", right: "\\]", display: true},
    {left: "\\(", right: "\\)", display: false},
  ];
  if (document.querySelector(".jupyter-wrapper")) {
    delimiters.unshift({left: "$$", right: "$$", display: true});
    delimiters.push({left: "$", right: "$", display: false});
  }
  renderMathInElement(document.body, {delimiters: delimiters, throwOnError: false});
});
