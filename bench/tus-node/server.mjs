// @tus/server 2.4.5 with @tus/file-store 2.1.1: the peer of bench/scenarios/tus.sh.
//   TUS_DIR=/path/to/store node bench/tus-node/server.mjs
// Listens on 127.0.0.1, a free port, at /files; prints `listening on PORT` once it does.
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const tus = new Server({ path: '/files', datastore: new FileStore({ directory: process.env.TUS_DIR }) })
const http = tus.listen({ host: '127.0.0.1', port: 0 }, () => {
  console.log(`listening on ${http.address().port}`)
})
