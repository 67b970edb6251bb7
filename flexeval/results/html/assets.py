"""The report's one style sheet and one script (written to report/assets/; no CDN, no network)."""

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.2em 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.correct td.score { background: #d8f0d8; } tr.wrong td.score { background: #f6d5d5; }
tr.predicted td { font-weight: bold; } tr.target td:first-child::after { content: " (answer)"; color: #070; }
.muted { color: #777; } .note { background: #fff7d6; padding: 4px 8px; display: inline-block; }
form#filters { margin: .6em 0; padding: .5em; background: #f6f6f6; display: inline-block; }
form#filters label { margin-right: 1em; }
nav.pager a, nav.pager span { margin-right: .5em; }
figure { margin: 0 1.5em 1em 0; display: inline-block; vertical-align: top; }
svg.sample-image rect.target-box { fill: none; stroke: #ff2a2a; stroke-width: 3; vector-effect: non-scaling-stroke; }
img.attention { max-width: 1100px; border: 1px solid #ccc; }
"""

# Reads window.FLEX_ITEMS[<run>] (items.js: [k, id, subset, score, prediction] per item) and, with
# ?vs=<other run>, window.FLEX_ITEMS[<other run>] (written into the page by the head script) for "flipped".
LIST_JS = r"""
(function () {
  var body = document.body, run = body.getAttribute('data-run');
  var perPage = parseInt(body.getAttribute('data-per-page'), 10) || 100;
  var q = new URLSearchParams(location.search);
  var f = {subset: q.get('subset') || '', answers: q.get('answers') || '', vs: q.get('vs') || '',
           flipped: q.get('flipped') || '', page: Math.max(1, parseInt(q.get('page') || '1', 10) || 1)};
  var form = document.getElementById('filters');
  ['subset', 'answers', 'vs', 'flipped'].forEach(function (k) { if (form.elements[k]) form.elements[k].value = f[k]; });
  var items = (window.FLEX_ITEMS || {})[run] || [];
  var other = f.vs ? (window.FLEX_ITEMS || {})[f.vs] : null;
  var otherScore = {};
  if (other) other.forEach(function (it) { otherScore[it[1]] = it[3]; });
  var status = document.getElementById('vs-status');
  if (f.vs && !other) status.textContent = 'run ' + f.vs + ' could not be loaded';
  var shown = items.filter(function (it) {
    if (f.subset && it[2] !== f.subset) return false;
    if (f.answers === 'correct' && it[3] !== 1) return false;
    if (f.answers === 'wrong' && it[3] === 1) return false;
    if (other && f.flipped) {
      if (!(it[1] in otherScore)) return false;
      var flip = (it[3] === 1) !== (otherScore[it[1]] === 1);
      if ((f.flipped === 'flipped') !== flip) return false;
    }
    return true;
  });
  var pages = Math.max(1, Math.ceil(shown.length / perPage));
  var page = Math.min(f.page, pages), start = (page - 1) * perPage;
  var tbody = document.getElementById('items');
  shown.slice(start, start + perPage).forEach(function (it) {
    var tr = document.createElement('tr');
    tr.className = 'item ' + (it[3] === 1 ? 'correct' : 'wrong');
    var href = 'items/' + Math.floor(it[0] / 1000) + '/' + it[0] + '.html';
    var cells = [String(it[0] + 1), null, it[2], it[4], String(it[3])];
    cells.forEach(function (text, i) {
      var td = document.createElement('td');
      if (i === 1) { var a = document.createElement('a'); a.href = href; a.textContent = it[1]; td.appendChild(a); }
      else td.textContent = text;
      if (i === 4) td.className = 'score num';
      if (i === 4 && other && it[1] in otherScore) td.textContent += ' (other: ' + otherScore[it[1]] + ')';
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  });
  document.getElementById('count').textContent = shown.length + ' of ' + items.length + ' items; page ' + page + ' of ' + pages;
  var pager = document.getElementById('pager');
  function link(p, text) {
    var a = document.createElement('a'); q.set('page', String(p)); a.href = '?' + q.toString(); a.textContent = text;
    pager.appendChild(a);
  }
  if (page > 1) link(page - 1, '« previous');
  var s = document.createElement('span'); s.textContent = page + ' / ' + pages; pager.appendChild(s);
  if (page < pages) link(page + 1, 'next »');
})();
"""

# In the list page's <head>: with ?vs=<run>, that run's items.js is loaded before list.js runs.
VS_LOADER = ("var v = new URLSearchParams(location.search).get('vs');"
             "if (v && /^[A-Za-z0-9._-]+$/.test(v)) document.write('<script src=\"../' + v + '/items.js\"><\\/script>');")
