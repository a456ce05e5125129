// The gallery's history in IndexedDB (images as Blobs, not base64 strings): it survives a reload and a restart.

const DB_NAME = "idforge-studio";
const STORE = "results";

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: "id" });
      store.createIndex("created", "created");
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(mode, work) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const result = work(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export const history = {
  put: (item) => run("readwrite", (store) => store.put(item)),
  remove: (id) => run("readwrite", (store) => store.delete(id)),
  clear: () => run("readwrite", (store) => store.clear()),
  async all() {
    const items = await run("readonly", (store) => store.getAll());
    return (items || []).sort((a, b) => a.created - b.created);
  },
};
