// Progressive enhancement only: every page works without it. Shows message times in the
// reader's own time zone (the server renders them in UTC).
document.querySelectorAll('time[datetime]').forEach(function (el) {
  var when = new Date(el.getAttribute('datetime'));
  if (isNaN(when)) return;
  el.textContent = when.toLocaleString(document.documentElement.lang || undefined, {
    dateStyle: 'medium', timeStyle: 'short'
  });
});
