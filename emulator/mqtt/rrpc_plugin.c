/*
 * The RRpc emulator's mosquitto plugin (plugin interface v5, mosquitto 2.0): device
 * authentication as the IoT platform does it, each device confined to its own topics,
 * presence for the emulator, and devices' RRpc answers routed to the emulator alone.
 *
 * Options (mosquitto.conf, written by emulator/run):
 *   plugin_opt_registry         the emulator's registry (JSON): every device with
 *                               "behaviour": "mqtt" and its "secret" may connect
 *   plugin_opt_bridge_user      the user name of the emulator's own connections
 *   plugin_opt_bridge_password  their password (a random token per run)
 *
 * A device connects with
 *   client id  <id>|securemode=3,signmethod=hmacsha1|hmacsha256|hmacmd5[,timestamp=<ms>][,...]|
 *   username   <DeviceName>&<ProductKey>
 *   password   hex HMAC(DeviceSecret, [clientId<id>]deviceName<dn>productKey<pk>[timestamp<ts>])
 * Anything else is refused (CONNACK "not authorized"), and so is every topic outside
 * /sys/<pk>/<dn>/..., /<pk>/<dn>/... and /ext/rrpc/<level>/<pk>/<dn>/... of its own.
 *
 * Topics of the emulator ($rrpc/...):
 *   $rrpc/presence/<pk>/<dn>   retained, the device's number of open connections, published
 *                              on each change (the plugin sees a connection at its
 *                              authentication and at its end)
 *   $rrpc/reply<topic>         what a device published on /sys/<pk>/<dn>/rrpc/response/...
 *                              or /ext/rrpc/...: the topic is rewritten before routing, so
 *                              only the emulator (which subscribes to it) gets the answer, and
 *                              a device subscribed to /ext/rrpc/+/<topic> is not handed its
 *                              own answer back as a new request
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define PRESENCE_PREFIX "$rrpc/presence/"
#define REPLY_PREFIX "$rrpc/reply"
#define SESSION_BUCKETS 4096

struct device {
  char *product_key, *device_name, *secret;
  int sessions; /* open, authenticated connections */
};

/* An authenticated connection: a device's, or the emulator's own (device NULL). */
struct session {
  const struct mosquitto *client;
  struct device *device;
  struct session *next;
};

struct plugin {
  mosquitto_plugin_id_t *id;
  char *bridge_user, *bridge_password;
  struct device *devices;
  size_t device_count;
  struct session *buckets[SESSION_BUCKETS];
};

/* ---- the registry ---------------------------------------------------------------- */

static char *read_file(const char *path) {
  FILE *file = fopen(path, "rb");
  if (!file) return NULL;
  size_t size = 0, capacity = 65536;
  char *text = malloc(capacity);
  while (text) {
    size += fread(text + size, 1, capacity - size - 1, file);
    if (size < capacity - 1) break;
    char *bigger = realloc(text, capacity * 2);
    if (!bigger) {
      free(text);
      text = NULL;
      break;
    }
    text = bigger;
    capacity *= 2;
  }
  if (ferror(file)) {
    free(text);
    text = NULL;
  }
  fclose(file);
  if (text) text[size] = '\0';
  return text;
}

/* The names go into topics and the "<dn>&<pk>" username: the emulator's registry check
 * allows these characters only (the platform's); anything else is left out here too. */
static int valid_name(const char *name) {
  if (!name || !*name) return 0;
  for (const char *c = name; *c; c++) {
    if (!isalnum((unsigned char)*c) && !strchr("-_@.:", *c)) return 0;
  }
  return 1;
}

/* Every device of every product with "behaviour": "mqtt" and a string "secret". A file
 * that cannot be read or parsed gives no devices: nginx, which reads the same file, then
 * refuses to start and names the problem. */
static void load_registry(struct plugin *p, const char *path) {
  char *text = read_file(path);
  cJSON *root = text ? cJSON_Parse(text) : NULL;
  free(text);
  if (!root) {
    mosquitto_log_printf(MOSQ_LOG_WARNING, "rrpc: cannot read the registry %s: no device may connect", path);
    return;
  }
  cJSON *products = cJSON_GetObjectItemCaseSensitive(root, "products"), *product;
  size_t count = 0;
  for (int pass = 0; pass < 2; pass++) {
    cJSON_ArrayForEach(product, products) {
      cJSON *devices = cJSON_GetObjectItemCaseSensitive(product, "devices"), *device;
      cJSON_ArrayForEach(device, devices) {
        cJSON *behaviour = cJSON_GetObjectItemCaseSensitive(device, "behaviour");
        cJSON *secret = cJSON_GetObjectItemCaseSensitive(device, "secret");
        if (!cJSON_IsString(behaviour) || strcmp(behaviour->valuestring, "mqtt") != 0) continue;
        if (!cJSON_IsString(secret) || !*secret->valuestring) continue;
        if (!valid_name(product->string) || !valid_name(device->string)) continue;
        if (pass == 1) {
          struct device *d = &p->devices[count];
          d->product_key = strdup(product->string);
          d->device_name = strdup(device->string);
          d->secret = strdup(secret->valuestring);
          if (!d->product_key || !d->device_name || !d->secret) break;
        }
        count++;
      }
    }
    if (pass == 0) {
      p->devices = calloc(count ? count : 1, sizeof *p->devices);
      if (!p->devices) break;
      p->device_count = count;
      count = 0;
    }
  }
  cJSON_Delete(root);
  mosquitto_log_printf(MOSQ_LOG_NOTICE, "rrpc: %zu MQTT devices in %s", p->device_count, path);
}

static struct device *find_device(struct plugin *p, const char *product_key, size_t pk_len,
                                  const char *device_name, size_t dn_len) {
  for (size_t i = 0; i < p->device_count; i++) {
    struct device *d = &p->devices[i];
    if (strlen(d->product_key) == pk_len && strlen(d->device_name) == dn_len &&
        memcmp(d->product_key, product_key, pk_len) == 0 && memcmp(d->device_name, device_name, dn_len) == 0) {
      return d;
    }
  }
  return NULL;
}

/* ---- sessions ------------------------------------------------------------------- */

static size_t bucket_of(const struct mosquitto *client) {
  return ((uintptr_t)client >> 4) % SESSION_BUCKETS;
}

static struct session *find_session(struct plugin *p, const struct mosquitto *client) {
  for (struct session *s = p->buckets[bucket_of(client)]; s; s = s->next) {
    if (s->client == client) return s;
  }
  return NULL;
}

static void publish_presence(const struct device *d) {
  char topic[256], payload[16];
  snprintf(topic, sizeof topic, PRESENCE_PREFIX "%s/%s", d->product_key, d->device_name);
  int length = snprintf(payload, sizeof payload, "%d", d->sessions);
  /* queued by the broker and sent at its next loop, after what it is doing now */
  if (mosquitto_broker_publish_copy(NULL, topic, length, payload, 0, true, NULL) != MOSQ_ERR_SUCCESS) {
    mosquitto_log_printf(MOSQ_LOG_WARNING, "rrpc: cannot publish the presence of %s", topic);
  }
}

static void count_session(struct device *d, int change) {
  if (!d) return;
  d->sessions += change;
  publish_presence(d);
}

/* A client the table already holds (its end was never reported, and mosquitto reuses the
 * memory) takes the new identity. */
static int add_session(struct plugin *p, const struct mosquitto *client, struct device *d) {
  struct session *s = find_session(p, client);
  if (s) {
    if (s->device != d) {
      count_session(s->device, -1);
      s->device = d;
      count_session(d, +1);
    }
    return MOSQ_ERR_SUCCESS;
  }
  s = malloc(sizeof *s);
  if (!s) return MOSQ_ERR_NOMEM;
  s->client = client;
  s->device = d;
  s->next = p->buckets[bucket_of(client)];
  p->buckets[bucket_of(client)] = s;
  count_session(d, +1);
  return MOSQ_ERR_SUCCESS;
}

static void remove_session(struct plugin *p, const struct mosquitto *client) {
  for (struct session **link = &p->buckets[bucket_of(client)]; *link; link = &(*link)->next) {
    struct session *s = *link;
    if (s->client != client) continue;
    *link = s->next;
    count_session(s->device, -1);
    free(s);
    return;
  }
}

/* ---- authentication ------------------------------------------------------------- */

static int secrets_equal(const char *given, const char *expected) {
  size_t n = strlen(expected);
  return strlen(given) == n && CRYPTO_memcmp(given, expected, n) == 0;
}

struct client_id {
  const char *id;
  size_t id_len;
  const EVP_MD *digest;
  const char *timestamp;
  size_t timestamp_len;
};

/* "<id>|k=v,k=v,...|": securemode=3 and a known signmethod required, timestamp optional
 * (digits), others ignored (SDKs add lan=, _v=, ext=...; a value may hold "|", as the
 * Node SDK's lan=JS|Broswer); a parameter given twice is refused. */
static int parse_client_id(const char *text, struct client_id *out) {
  const char *first = strchr(text, '|'), *last = strrchr(text, '|');
  if (!first || last == first || last[1] != '\0') return 0;
  memset(out, 0, sizeof *out);
  out->id = text;
  out->id_len = (size_t)(first - text);
  int seen_securemode = 0, seen_signmethod = 0, seen_timestamp = 0;
  for (const char *item = first + 1; item < last;) {
    const char *end = memchr(item, ',', (size_t)(last - item));
    if (!end) end = last;
    const char *equals = memchr(item, '=', (size_t)(end - item));
    if (!equals || equals == item) return 0;
    size_t key_len = (size_t)(equals - item), value_len = (size_t)(end - equals - 1);
    const char *value = equals + 1;
#define KEY_IS(name) (key_len == sizeof(name) - 1 && memcmp(item, name, key_len) == 0)
#define VALUE_IS(name) (value_len == sizeof(name) - 1 && memcmp(value, name, value_len) == 0)
    if (KEY_IS("securemode")) {
      if (seen_securemode++ || !VALUE_IS("3")) return 0;
    } else if (KEY_IS("signmethod")) {
      if (seen_signmethod++) return 0;
      if (VALUE_IS("hmacsha1")) out->digest = EVP_sha1();
      else if (VALUE_IS("hmacsha256")) out->digest = EVP_sha256();
      else if (VALUE_IS("hmacmd5")) out->digest = EVP_md5();
      else return 0;
    } else if (KEY_IS("timestamp")) {
      if (seen_timestamp++ || value_len == 0 || value_len > 20) return 0;
      for (size_t i = 0; i < value_len; i++) {
        if (!isdigit((unsigned char)value[i])) return 0;
      }
      out->timestamp = value;
      out->timestamp_len = value_len;
    }
#undef KEY_IS
#undef VALUE_IS
    item = end + 1;
  }
  return seen_securemode && seen_signmethod;
}

static void append(char *buffer, size_t *length, const char *text, size_t text_len) {
  memcpy(buffer + *length, text, text_len);
  *length += text_len;
}

/* The signed content, the HMAC and its hex: upper or lower case is accepted. */
static int password_matches(const struct device *d, const struct client_id *cid, const char *password) {
  size_t pk_len = strlen(d->product_key), dn_len = strlen(d->device_name);
  size_t capacity = cid->id_len + pk_len + dn_len + cid->timestamp_len + 64, length = 0;
  char *content = malloc(capacity);
  if (!content) return 0;
  if (cid->id_len) {
    append(content, &length, "clientId", 8);
    append(content, &length, cid->id, cid->id_len);
  }
  append(content, &length, "deviceName", 10);
  append(content, &length, d->device_name, dn_len);
  append(content, &length, "productKey", 10);
  append(content, &length, d->product_key, pk_len);
  if (cid->timestamp) {
    append(content, &length, "timestamp", 9);
    append(content, &length, cid->timestamp, cid->timestamp_len);
  }
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  int ok = HMAC(cid->digest, d->secret, (int)strlen(d->secret), (unsigned char *)content, length, mac, &mac_len) != NULL;
  free(content);
  if (!ok || strlen(password) != 2 * (size_t)mac_len) return 0;
  unsigned diff = 0;
  for (unsigned int i = 0; i < mac_len; i++) {
    char hex[3];
    snprintf(hex, sizeof hex, "%02x", mac[i]);
    diff |= (unsigned)(tolower((unsigned char)password[2 * i]) ^ hex[0]);
    diff |= (unsigned)(tolower((unsigned char)password[2 * i + 1]) ^ hex[1]);
  }
  return diff == 0;
}

/* "<DeviceName>&<ProductKey>" -> the registry's device, or NULL. */
static struct device *device_of_username(struct plugin *p, const char *username) {
  const char *amp = strchr(username, '&');
  if (!amp || strchr(amp + 1, '&')) return NULL;
  return find_device(p, amp + 1, strlen(amp + 1), username, (size_t)(amp - username));
}

static int on_basic_auth(int event, void *event_data, void *userdata) {
  struct plugin *p = userdata;
  struct mosquitto_evt_basic_auth *ed = event_data;
  const char *client_id = mosquitto_client_id(ed->client);
  if (!ed->username || !ed->password || !client_id) return MOSQ_ERR_AUTH;
  if (strcmp(ed->username, p->bridge_user) == 0) {
    if (!secrets_equal(ed->password, p->bridge_password)) return MOSQ_ERR_AUTH;
    return add_session(p, ed->client, NULL);
  }
  struct device *d = device_of_username(p, ed->username);
  struct client_id cid;
  if (!d || !parse_client_id(client_id, &cid) || !password_matches(d, &cid, ed->password)) {
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "rrpc: refused the connection of client %s (username %s)",
                         client_id, ed->username);
    return MOSQ_ERR_AUTH;
  }
  return add_session(p, ed->client, d);
}

static int on_disconnect(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_disconnect *ed = event_data;
  remove_session(userdata, ed->client);
  return MOSQ_ERR_SUCCESS;
}

/* ---- topics --------------------------------------------------------------------- */

/* Whether `topic` starts with `prefix`, and the end of the match. */
static const char *skip(const char *topic, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(topic, prefix, n) == 0 ? topic + n : NULL;
}

/* Whether `topic` is "/<pk>/<dn>/" followed by something; returns what follows. */
static const char *skip_own(const char *topic, const struct device *d) {
  const char *rest;
  if (topic[0] != '/' || !(rest = skip(topic + 1, d->product_key)) || rest[0] != '/' ||
      !(rest = skip(rest + 1, d->device_name)) || rest[0] != '/' || rest[1] == '\0') {
    return NULL;
  }
  return rest + 1;
}

/* After "/ext/rrpc/": one level (a MessageId, or + in a filter), then "/<pk>/<dn>/..." */
static const char *skip_ext_level(const char *rest) {
  const char *slash = strchr(rest, '/');
  if (!slash || slash == rest) return NULL;
  for (const char *c = rest; c < slash; c++) {
    if (*c == '#') return NULL;
  }
  return slash;
}

enum topic_kind { NOT_OWN, OWN, OWN_REQUEST, OWN_ANSWER };

static enum topic_kind classify(const char *topic, const struct device *d) {
  const char *rest;
  if ((rest = skip(topic, "/sys")) && (rest = skip_own(rest, d))) {
    if (skip(rest, "rrpc/request/")) return OWN_REQUEST;
    if (skip(rest, "rrpc/response/")) return OWN_ANSWER;
    return OWN;
  }
  if ((rest = skip(topic, "/ext/rrpc/")) && (rest = skip_ext_level(rest)) && skip_own(rest, d)) {
    return OWN_ANSWER; /* as a topic a device publishes on; the same as a filter it subscribes to */
  }
  return skip_own(topic, d) ? OWN : NOT_OWN;
}

static int on_acl_check(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_acl_check *ed = event_data;
  struct session *s = find_session(userdata, ed->client);
  if (!s) return MOSQ_ERR_ACL_DENIED;
  if (!s->device) return MOSQ_ERR_SUCCESS; /* the emulator */
  enum topic_kind kind = classify(ed->topic, s->device);
  if (kind == NOT_OWN) return MOSQ_ERR_ACL_DENIED;
  /* a device answers requests, it does not make them */
  if (kind == OWN_REQUEST && ed->access == MOSQ_ACL_WRITE) return MOSQ_ERR_ACL_DENIED;
  return MOSQ_ERR_SUCCESS;
}

/* Runs after the write check: a device's answer goes to $rrpc/reply<topic>, not retained. */
static int on_message(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_message *ed = event_data;
  struct session *s = find_session(userdata, ed->client);
  if (!s || !s->device || classify(ed->topic, s->device) != OWN_ANSWER) return MOSQ_ERR_SUCCESS;
  size_t length = strlen(REPLY_PREFIX) + strlen(ed->topic) + 1;
  char *topic = mosquitto_malloc(length);
  if (!topic) return MOSQ_ERR_NOMEM;
  snprintf(topic, length, REPLY_PREFIX "%s", ed->topic);
  mosquitto_free(ed->topic);
  ed->topic = topic;
  ed->retain = false;
  return MOSQ_ERR_SUCCESS;
}

/* ---- the plugin interface ------------------------------------------------------- */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions) {
  for (int i = 0; i < supported_version_count; i++) {
    if (supported_versions[i] == 5) return 5;
  }
  return -1;
}

static void free_plugin(struct plugin *p) {
  if (!p) return;
  for (size_t i = 0; i < p->device_count; i++) {
    free(p->devices[i].product_key);
    free(p->devices[i].device_name);
    free(p->devices[i].secret);
  }
  free(p->devices);
  for (size_t b = 0; b < SESSION_BUCKETS; b++) {
    while (p->buckets[b]) {
      struct session *s = p->buckets[b];
      p->buckets[b] = s->next;
      free(s);
    }
  }
  free(p->bridge_user);
  free(p->bridge_password);
  free(p);
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
                          int option_count) {
  const char *registry = NULL, *user = NULL, *password = NULL;
  for (int i = 0; i < option_count; i++) {
    if (strcmp(options[i].key, "registry") == 0) registry = options[i].value;
    else if (strcmp(options[i].key, "bridge_user") == 0) user = options[i].value;
    else if (strcmp(options[i].key, "bridge_password") == 0) password = options[i].value;
  }
  if (!registry || !user || !password || strlen(password) < 16) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "rrpc: plugin_opt_registry, plugin_opt_bridge_user and "
                                       "plugin_opt_bridge_password (16 characters or more) are required");
    return MOSQ_ERR_INVAL;
  }
  struct plugin *p = calloc(1, sizeof *p);
  if (!p || !(p->bridge_user = strdup(user)) || !(p->bridge_password = strdup(password))) {
    free_plugin(p);
    return MOSQ_ERR_NOMEM;
  }
  p->id = identifier;
  load_registry(p, registry);
  if (mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, p) ||
      mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, p) ||
      mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, on_message, NULL, p) ||
      mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, p)) {
    free_plugin(p);
    return MOSQ_ERR_UNKNOWN;
  }
  *userdata = p;
  return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count) {
  struct plugin *p = userdata;
  if (!p) return MOSQ_ERR_SUCCESS;
  mosquitto_callback_unregister(p->id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
  mosquitto_callback_unregister(p->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
  mosquitto_callback_unregister(p->id, MOSQ_EVT_MESSAGE, on_message, NULL);
  mosquitto_callback_unregister(p->id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
  free_plugin(p);
  return MOSQ_ERR_SUCCESS;
}
