// The upload page (/upload): Uppy's Dashboard uploading with tus to v1/files/tus/.
// Authorised by a signed upload URL's query (?grant=..&sig=.., from POST
// /v1/files/sign-upload) or by a user token pasted in the form, which is kept in this tab's
// sessionStorage only. Finished files are listed with their public links: with a token,
// the user's files from GET /v1/files/all; with a grant, what this page uploaded, from the
// X-Upload-Key and X-Upload-Url headers of the tus responses.
'use strict';
(function () {
  var TUS_ENDPOINT = 'v1/files/tus/';
  var KEY_HEADER = 'X-Upload-Key';
  var URL_HEADER = 'X-Upload-Url';
  var TOKEN_STORE = 'upload-server.token';

  var $ = function (id) { return document.getElementById(id); };
  var params = new URLSearchParams(window.location.search);
  var grantText = params.get('grant');
  var sig = params.get('sig');
  var token = null;
  // Keys and URLs the server gave, by tus upload URL (query left out).
  var stored = new Map();
  var listed = new Set();

  function say(text) { $('message').textContent = text || ''; }

  function withoutQuery(url) { return String(url || '').split('?')[0]; }

  function decodeGrant(text) {
    try {
      var b64 = text.replace(/-/g, '+').replace(/_/g, '/');
      b64 += '='.repeat((4 - (b64.length % 4)) % 4);
      var bytes = Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); });
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      return null;
    }
  }

  function humanSize(n) {
    if (typeof n !== 'number') return '';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }

  // A link only to this server or to an http(s) URL it named.
  function safeHref(url) {
    try {
      var u = new URL(url, document.baseURI);
      return (u.protocol === 'https:' || u.protocol === 'http:') ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  // The public /storage link of a key (each segment escaped).
  function publicLink(key) {
    return safeHref('/' + key.split('/').map(encodeURIComponent).join('/'));
  }

  function addFile(item) {
    var id = item.key || ('name:' + item.name + ':' + item.size);
    if (listed.has(id)) return;
    listed.add(id);
    var li = document.createElement('li');
    var href = item.url ? safeHref(item.url) : (item.key ? publicLink(item.key) : null);
    if (href) {
      var a = document.createElement('a');
      a.href = href;
      a.rel = 'noopener noreferrer';
      a.target = '_blank';
      a.textContent = item.name;
      li.appendChild(a);
    } else {
      li.appendChild(document.createTextNode(item.name));
    }
    var size = document.createElement('span');
    size.className = 'size';
    size.textContent = humanSize(item.size) + (item.key ? '  ' + item.key : '');
    li.appendChild(size);
    if (item.key) li.dataset.key = item.key;
    if (href) li.dataset.url = href;
    var list = $('files');
    list.appendChild(li);
    list.dataset.count = String(list.children.length);
  }

  function clearFiles() {
    listed.clear();
    $('files').textContent = '';
    $('files').dataset.count = '0';
  }

  // With a token: the user's files, newest first.
  function listUserFiles() {
    if (!token) return;
    fetch('v1/files/all?limit=200', { headers: { Authorization: 'Bearer ' + token } })
      .then(function (res) {
        return res.json().then(function (body) { return { ok: res.ok, body: body }; });
      })
      .then(function (r) {
        if (!r.ok) {
          say('Could not list your files: ' + (r.body && r.body.detail ? JSON.stringify(r.body.detail) : 'error'));
          return;
        }
        $('files-title').textContent = 'Your files (' + r.body.total_count + ')';
        clearFiles();
        (r.body.files || []).forEach(function (f) {
          addFile({ name: f.filename || f.key, size: f.size, key: f.key });
        });
      })
      .catch(function (e) { say('Could not list your files: ' + e); });
  }

  var restrictions = {};
  var grant = grantText ? decodeGrant(grantText) : null;
  if (grantText) {
    if (!grant || !sig) {
      say('This upload link is incomplete or damaged; ask for a new one.');
    } else {
      var until = new Date(grant.e * 1000);
      var parts = ['Uploading for ' + grant.u];
      parts.push(grant.f ? 'into folder ' + grant.f : 'into the top-level folder');
      parts.push('files up to ' + humanSize(grant.m));
      if (grant.t) parts.push('of type ' + grant.t.join(', '));
      parts.push('until ' + until.toLocaleString());
      $('grant-info').textContent = parts.join(', ') + '.';
      $('grant-info').hidden = false;
      if (until.getTime() <= Date.now()) say('This upload link has expired; ask for a new one.');
      restrictions.maxFileSize = grant.m;
      if (grant.t) restrictions.allowedFileTypes = grant.t;
    }
  } else {
    $('token-form').hidden = false;
    try { token = window.sessionStorage.getItem(TOKEN_STORE); } catch (e) { token = null; }
    $('token-state').textContent = token ? 'Token set for this tab.' : 'No token yet.';
    $('files-title').textContent = 'Your files';
  }

  var endpoint = TUS_ENDPOINT + (grantText ? '?grant=' + encodeURIComponent(grantText) +
    '&sig=' + encodeURIComponent(sig || '') : '');

  var uppy = new Uppy.Uppy({ restrictions: restrictions, autoProceed: false })
    .use(Uppy.Dashboard, {
      inline: true,
      target: '#dashboard',
      height: 420,
      width: '100%',
      showProgressDetails: true,
      proudlyDisplayPoweredByUppy: false,
    })
    .use(Uppy.Tus, {
      endpoint: endpoint,
      removeFingerprintOnSuccess: true,
      headers: function () {
        return token && !grantText ? { Authorization: 'Bearer ' + token } : {};
      },
      onAfterResponse: function (req, res) {
        var key = res.getHeader(KEY_HEADER);
        if (key) stored.set(withoutQuery(req.getURL()), { key: key, url: res.getHeader(URL_HEADER) });
      },
    });

  if (grant && grant.f) uppy.setMeta({ folder: grant.f });

  uppy.on('upload-success', function (file, response) {
    var info = stored.get(withoutQuery(response && response.uploadURL)) || {};
    addFile({ name: file.name, size: file.size, key: info.key, url: info.url });
  });
  uppy.on('complete', function (result) {
    if (result.failed && result.failed.length) {
      say(result.failed.length + ' file(s) failed; retry them from the list above.');
    } else {
      say('');
    }
    listUserFiles();
    document.body.dataset.uploads = String(result.successful ? result.successful.length : 0);
  });

  $('token-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var t = $('token').value.trim();
    if (t) {
      token = t;
      try { window.sessionStorage.setItem(TOKEN_STORE, t); } catch (e) { /* memory only */ }
      $('token').value = '';
    }
    var folder = $('folder').value.trim();
    uppy.setMeta({ folder: folder });
    $('token-state').textContent = token ? 'Token set for this tab.' : 'No token yet.';
    listUserFiles();
  });
  $('forget').addEventListener('click', function () {
    token = null;
    try { window.sessionStorage.removeItem(TOKEN_STORE); } catch (e) { /* nothing kept */ }
    $('token-state').textContent = 'No token yet.';
    clearFiles();
  });

  if (token) listUserFiles();
  window.uploadPage = { uppy: uppy };
}());
