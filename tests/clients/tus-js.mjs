// tus-js-client 4.3.1 against the server, one case per run; driven by tests/api/tus_clients.rs.
//
//   node tests/clients/tus-js.mjs CASE
//
// Environment: TUS_ENDPOINT (the creation URL), TUS_FILE (what to upload), TUS_HEADERS (JSON
// object of request headers: the credentials), TUS_METADATA (JSON object, Upload-Metadata),
// TUS_CHUNK (bytes per PATCH; default: the whole rest in one), TUS_PROTOCOL (tus-v1,
// ietf-draft-05), TUS_DURING_CREATION (1: the first chunk in the POST), TUS_OVERRIDE_PATCH
// (1: POST with X-HTTP-Method-Override), TUS_STATE (a file holding `{}` at first: the URL
// storage of the restart cases).
//
// The last line on stdout is one JSON object: what the test checks against the server
// (`url`, `key` and `publicUrl` from X-Upload-Key / X-Upload-Url, the PATCH offsets sent,
// the statuses seen, the Locations of the uploads created, ...). Anything wrong exits 1
// with the error on stderr.

import { createReadStream, readFileSync } from 'node:fs'
import { Readable } from 'node:stream'
import * as tus from 'tus-js-client'

const env = process.env
const what = process.argv[2]
const file = env.TUS_FILE
const seen = { patchOffsets: [], statuses: [], methods: [], created: [] }

function options(extra = {}) {
  return {
    endpoint: env.TUS_ENDPOINT,
    headers: JSON.parse(env.TUS_HEADERS || '{}'),
    metadata: JSON.parse(env.TUS_METADATA || '{}'),
    chunkSize: env.TUS_CHUNK ? Number(env.TUS_CHUNK) : Number.POSITIVE_INFINITY,
    protocol: env.TUS_PROTOCOL || 'tus-v1',
    // creation-with-upload: the first chunk in the creation request.
    uploadDataDuringCreation: env.TUS_DURING_CREATION === '1',
    overridePatchMethod: env.TUS_OVERRIDE_PATCH === '1',
    // Fast retries: the cases that cut or restart need them; a test is bounded in time.
    retryDelays: [50, 200, 500, 1000, 2000],
    onBeforeRequest(req) {
      seen.methods.push(req.getMethod())
      const offset = req.getHeader('Upload-Offset')
      // A PATCH, or a POST with X-HTTP-Method-Override: PATCH.
      if (offset !== undefined) {
        seen.patchOffsets.push(Number(offset))
      }
    },
    onAfterResponse(req, res) {
      seen.statuses.push(`${req.getMethod()} ${res.getStatus()}`)
      if (req.getMethod() === 'POST' && res.getHeader('Location')) {
        seen.created.push(res.getHeader('Location'))
      }
      const key = res.getHeader('X-Upload-Key')
      if (key) {
        seen.key = key
        seen.publicUrl = res.getHeader('X-Upload-Url')
      }
    },
    ...extra,
  }
}

// Runs an upload to its end (onSuccess) or its error.
function run(input, extra = {}) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(input, options({ onSuccess: () => resolve(upload), onError: reject, ...extra }))
    upload.start()
  })
}

function done(result) {
  console.log(JSON.stringify({ ...seen, ...result }))
}

const cases = {
  // A file in chunks of TUS_CHUNK, one PATCH each.
  async chunked() {
    const upload = await run(createReadStream(file))
    done({ url: upload.url })
  },

  // parallelUploads: 3 partial uploads (Upload-Concat: partial), then the final one.
  async parallel() {
    // A service names its user in the partial uploads' metadata too.
    const { user_id } = JSON.parse(env.TUS_METADATA || '{}')
    const upload = await run(readFileSync(file), {
      parallelUploads: 3,
      metadataForPartialUploads: user_id ? { user_id } : {},
    })
    done({ url: upload.url })
  },

  // Upload-Defer-Length: a stream whose size is known only at its end.
  async deferred() {
    const bytes = readFileSync(file)
    // Handed over in odd slices, so the client's chunks and the stream's do not line up.
    async function* slices() {
      for (let i = 0; i < bytes.length; i += 100_000) {
        yield bytes.subarray(i, Math.min(i + 100_000, bytes.length))
      }
    }
    const upload = await run(Readable.from(slices(), { objectMode: false }), { uploadLengthDeferred: true })
    done({ url: upload.url })
  },

  // Termination: abort(true) after the first chunk sends DELETE.
  async terminate() {
    const result = await new Promise((resolve, reject) => {
      let upload
      const chunkComplete = (_size, accepted) => {
        if (upload._aborted) return
        upload.abort(true).then(() => resolve({ url: upload.url, accepted }), reject)
      }
      upload = new tus.Upload(
        createReadStream(file),
        options({
          onChunkComplete: chunkComplete,
          onSuccess: () => reject(new Error('finished although aborted after the first chunk')),
          onError: reject,
        }),
      )
      upload.start()
    })
    done(result)
  },

  // An upload remembered in the URL storage (TUS_STATE), in chunks; the test kills this
  // process and the server in the middle of it.
  async 'restart-begin'() {
    const upload = await run(createReadStream(file), { urlStorage: new tus.FileUrlStorage(env.TUS_STATE) })
    done({ url: upload.url })
  },

  // The same file again: findPreviousUploads, resumeFromPreviousUpload, to the end.
  async 'restart-resume'() {
    const input = createReadStream(file)
    const result = await new Promise((resolve, reject) => {
      const upload = new tus.Upload(
        input,
        options({
          urlStorage: new tus.FileUrlStorage(env.TUS_STATE),
          onSuccess: () => resolve({ url: upload.url, previous: previousCount }),
          onError: reject,
        }),
      )
      let previousCount = 0
      upload
        .findPreviousUploads()
        .then((previous) => {
          previousCount = previous.length
          if (previous.length === 0) {
            reject(new Error('no previous upload found in the URL storage'))
            return
          }
          upload.resumeFromPreviousUpload(previous[0])
          upload.start()
        })
        .catch(reject)
    })
    done(result)
  },
}

const fn = cases[what]
if (!fn) {
  console.error(`unknown case ${what}; cases: ${Object.keys(cases).join(', ')}`)
  process.exit(2)
}
// No case may hang a test: 60 s at most.
const timer = setTimeout(() => {
  console.error(`${what}: timed out; seen ${JSON.stringify(seen)}`)
  process.exit(1)
}, 60_000)
timer.unref()
try {
  await fn()
  process.exit(0)
} catch (e) {
  console.error(`${what}: ${e?.stack || e}; seen ${JSON.stringify(seen)}`)
  process.exit(1)
}
