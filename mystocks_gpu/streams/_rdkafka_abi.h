/*
 * librdkafka's public ABI as the extension uses it, and the table of its functions that bind()
 * resolves in the library confluent-kafka loaded (_rdbatch.c); shared by _rdbatch.c (binding,
 * columnar ingest, the module) and _rdsend.c (producing from columns).
 */
#ifndef MYSTOCKS_RDKAFKA_ABI_H
#define MYSTOCKS_RDKAFKA_ABI_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct rd_kafka_s rd_kafka_t;
typedef struct rd_kafka_queue_s rd_kafka_queue_t;
typedef struct rd_kafka_topic_s rd_kafka_topic_t;
typedef struct rd_kafka_error_s rd_kafka_error_t;

/* public ABI of librdkafka's rd_kafka_vu_t (rdkafka.h, rd_kafka_produceva) */
typedef struct {
        int vtype;
        union {
                const char *cstr;
                void *ptr;
                int i;
                int32_t i32;
                int64_t i64;
                struct {
                        void *ptr;
                        size_t size;
                } mem;
                struct {
                        const char *name;
                        const void *val;
                        Py_ssize_t size;
                } header;
                char _pad[64];
        } u;
} rd_kafka_vu_t;

enum { VT_END, VT_TOPIC, VT_RKT, VT_PARTITION, VT_VALUE, VT_KEY, VT_OPAQUE, VT_MSGFLAGS, VT_TIMESTAMP, VT_HEADER };
#define RD_KAFKA_MSG_F_COPY 0x2
#define RD_KAFKA_PRODUCER 0
#define RD_KAFKA_RESP_ERR__QUEUE_FULL (-184)
#define MAX_HEADERS 64

/* public ABI of librdkafka's rd_kafka_message_t (rdkafka.h, unchanged since 0.9) */
typedef struct {
        int err;
        rd_kafka_topic_t *rkt;
        int32_t partition;
        void *payload;
        size_t len;
        void *key;
        size_t key_len;
        int64_t offset;
        void *_private;
} rd_kafka_message_t;

/* the head of every confluent-kafka client object */
typedef struct {
        PyObject_HEAD
        rd_kafka_t *rk;
} CflHandle;

#define RD_KAFKA_CONSUMER 1
#define RD_KAFKA_RESP_ERR__PARTITION_EOF (-191)

typedef struct {
        int bound;
        /* confluent-kafka's Producer and Consumer types (bind()): a handle is read only from their
           instances, whose first field after PyObject_HEAD is rd_kafka_t * (CflHandle) */
        PyTypeObject *producer_type, *consumer_type;
        int (*version)(void);
        int (*type)(const rd_kafka_t *);
        rd_kafka_queue_t *(*queue_new)(rd_kafka_t *);
        void (*queue_destroy)(rd_kafka_queue_t *);
        rd_kafka_queue_t *(*queue_get_partition)(rd_kafka_t *, const char *, int32_t);
        rd_kafka_queue_t *(*queue_get_consumer)(rd_kafka_t *);
        void (*queue_forward)(rd_kafka_queue_t *, rd_kafka_queue_t *);
        size_t (*queue_length)(rd_kafka_queue_t *);
        Py_ssize_t (*consume_batch_queue)(rd_kafka_queue_t *, int, rd_kafka_message_t **, size_t);
        void (*message_destroy)(rd_kafka_message_t *);
        int64_t (*message_timestamp)(const rd_kafka_message_t *, int *);
        const char *(*err2str)(int);
        rd_kafka_error_t *(*produceva)(rd_kafka_t *, const rd_kafka_vu_t *, size_t);
        rd_kafka_topic_t *(*topic_new)(rd_kafka_t *, const char *, void *);
        void (*topic_destroy)(rd_kafka_topic_t *);
        int (*error_code)(const rd_kafka_error_t *);
        const char *(*error_string)(const rd_kafka_error_t *);
        void (*error_destroy)(rd_kafka_error_t *);
        int (*brokers_add)(rd_kafka_t *, const char *);
} RdApi;

#define HIDDEN __attribute__((visibility("hidden")))

/* librdkafka's functions, resolved by bind() (rd.bound once done) */
extern HIDDEN RdApi rd;

/* the rd_kafka_t of a confluent-kafka client of the bound type (rd.producer_type or
   rd.consumer_type, with the matching librdkafka handle type); NULL with an exception set when
   unbound, of another type, or closed */
HIDDEN rd_kafka_t *client_rk(PyObject *client, int want_producer);

/* _rdsend.c */
HIDDEN PyObject *rb_produce_many(PyObject *self, PyObject *args);
HIDDEN PyObject *rb_size_bound(PyObject *self, PyObject *args);
HIDDEN PyObject *rb_partitions_of(PyObject *self, PyObject *args);
extern HIDDEN PyTypeObject SenderType;

#endif
