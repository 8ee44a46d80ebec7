// A stream adapter in JavaScript, built with jco (componentize-js): it stores items in the
// store the host lends it, and refuses an item whose `text` is empty or not a string.
//
//   node tests/sdk/node/build-js-adapter.mjs adapters/js-example/app.js wit js_example.wasm
import { write as log } from 'streamhost:adapter/log@0.1.0';
import * as store from 'streamhost:adapter/store@0.1.0';

export const streamAdapter = {
  init(config) {
    log('info', `javascript adapter started with config ${config}`);
  },
  get(stream, group, item) {
    return store.get(stream, group, item);
  },
  set(stream, group, item, data) {
    const value = JSON.parse(data);
    if (typeof value?.text !== 'string' || value.text === '') {
      throw { tag: 'invalid', val: 'field `text` must be a non-empty string' };
    }
    return store.set(stream, group, item, data);
  },
  delete(stream, group, item) {
    return store.delete(stream, group, item);
  },
  listItems(stream, group) {
    return store.listItems(stream, group);
  },
  listGroups(stream) {
    return store.listGroups(stream);
  },
  update() {
    // Let the host read, apply the ops and call `set`, which validates the result.
    throw { tag: 'unsupported' };
  },
};
