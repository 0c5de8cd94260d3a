// A job's page: poll /api/jobs/ID, show its state and progress, open the result page when it is done.
(function () {
  "use strict";
  function ready() {
    var box = document.getElementById("job");
    if (!box) return;
    var id = box.getAttribute("data-id");
    var state = document.getElementById("job-state"), progress = document.getElementById("progress");
    var bar = document.getElementById("progress-bar"), error = document.getElementById("error");
    function show(job) {
      state.textContent = job.state;
      state.className = "state-" + job.state;
      progress.textContent = job.stage + (job.total ? " " + job.done + "/" + job.total : (job.done ? " " + job.done : ""));
      if (job.total) { bar.max = job.total; bar.value = job.done; }
      if (job.state === "failed") {  // the failure, not where the bar stopped
        error.textContent = job.error || "the job failed"; error.hidden = false;
        var advice = document.getElementById("advice");
        if (advice && job.advice) { advice.firstChild.textContent = job.advice + " "; advice.hidden = false; }
        progress.hidden = true; bar.hidden = true;
      }
      if (job.state === "done" && job.result_key) { window.location.assign("/results/" + job.result_key); return true; }
      return job.state === "failed";
    }
    function poll() {
      fetch("/api/jobs/" + encodeURIComponent(id), {cache: "no-store"}).then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) { error.textContent = body.error || ("HTTP " + r.status); error.hidden = false; return; }
          if (!show(body)) setTimeout(poll, 400);
        });
      }).catch(function () { setTimeout(poll, 1500); });
    }
    poll();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready); else ready();
})();
