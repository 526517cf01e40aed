/* cdcsync console: the charts of an integration's page (uPlot), fed by its /series JSON.
   No inline script anywhere (the Content-Security-Policy forbids it); htmx does the rest. */
(function () {
  "use strict";

  var COLORS = ["#0b57b0", "#c05600", "#0f6b2f"];

  function fmt(v, unit) {
    if (v === null || v === undefined) { return "-"; }
    var digits = Math.abs(v) < 100 && unit === "/s" ? 1 : 0;
    return v.toLocaleString("en", { maximumFractionDigits: digits }) + unit;
  }

  function build(el, data) {
    var keys = el.dataset.keys.split(" ");
    var labels = el.dataset.labels.split("|");
    var unit = el.dataset.unit;
    var series = [{}];
    keys.forEach(function (key, i) {
      series.push({ label: labels[i], stroke: COLORS[i % COLORS.length], width: 2,
                    value: function (u, v) { return fmt(v, unit); } });
    });
    var opts = {
      width: Math.max(el.clientWidth, 300), height: 220, series: series,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(max || 0, 1) * 1.1]; } } },
      axes: [{}, { size: 60, values: function (u, vals) { return vals.map(function (v) { return fmt(v, ""); }); } }],
      legend: { live: true }
    };
    var chart = new uPlot(opts, columns(keys, data), el);
    el.uplot = chart;
    return chart;
  }

  function columns(keys, data) {
    return [data.t].concat(keys.map(function (key) { return data[key]; }));
  }

  function summarise(el, data) {
    var target = document.querySelector('[data-summary="' + el.dataset.chart + '"]');
    if (!target) { return; }
    var keys = el.dataset.keys.split(" ");
    var labels = el.dataset.labels.split("|");
    var n = data.t.length;
    if (n === 0) { target.textContent = "No samples yet."; return; }
    var parts = keys.map(function (key, i) {
      var values = data[key].filter(function (v) { return v !== null; });
      var last = data[key][n - 1];
      var max = values.length ? Math.max.apply(null, values) : null;
      return labels[i] + " now " + fmt(last, el.dataset.unit) + ", highest " + fmt(max, el.dataset.unit);
    });
    target.textContent = n + " samples: " + parts.join("; ") + ".";
  }

  function refresh(box) {
    fetch(box.dataset.series, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.href = "/console/login"; return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (!data) { return; }
        box.querySelectorAll("[data-chart]").forEach(function (el) {
          var keys = el.dataset.keys.split(" ");
          if (el.uplot) { el.uplot.setData(columns(keys, data)); } else { build(el, data); }
          el.dataset.points = String(data.t.length);
          summarise(el, data);
        });
      })
      .catch(function () { /* the next refresh tries again */ });
  }

  function start() {
    document.querySelectorAll("[data-series]").forEach(function (box) {
      refresh(box);
      var every = Math.max(parseFloat(box.dataset.interval) || 3, 1) * 1000;
      window.setInterval(function () { refresh(box); }, every);
      window.addEventListener("resize", function () {
        box.querySelectorAll("[data-chart]").forEach(function (el) {
          if (el.uplot) { el.uplot.setSize({ width: Math.max(el.clientWidth, 300), height: 220 }); }
        });
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
