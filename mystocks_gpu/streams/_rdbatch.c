/*
 * Columnar batch ingest over librdkafka (the worker's optional fast path).
 *
 * confluent-kafka's Consumer.consume() builds one Python Message object per record (with a topic
 * string and a timestamp tuple each), and the worker then reads every field back through Python
 * calls. This module reads the same librdkafka messages straight into Python lists, one list per
 * field (values, keys, partitions, offsets, timestamps), in one C loop.
 *
 * It uses only librdkafka's public API, on the librdkafka that confluent-kafka already loaded
 * (found by the caller, bound here with dlopen(RTLD_NOLOAD) + dlsym: nothing is linked at build
 * time, so this compiles with Python's headers alone):
 *
 *   - each assigned partition's fetch queue is forwarded to a private queue
 *     (rd_kafka_queue_get_partition + rd_kafka_queue_forward). An application-set forward is kept
 *     by librdkafka across fetch (re)starts, so the consumer group's rebalances, errors and commit
 *     callbacks stay on the consumer queue, served by confluent-kafka's own poll/consume, and no
 *     confluent-kafka callback can run inside this module;
 *   - rd_kafka_consume_batch_queue on the private queue returns messages with the same semantics
 *     as the consumer queue (version barriers after seek/revoke drop outdated messages,
 *     transaction control records are skipped, the application position advances);
 *   - detach() forwards a partition back to the consumer queue (librdkafka's default).
 *
 * Producing from columns (produce_many, the Sender thread, size_bound) is in _rdsend.c; the ABI
 * and the function table both files use are in _rdkafka_abi.h.
 *
 * The one thing read from confluent-kafka's object is its handle pointer: the first field after
 * PyObject_HEAD of every confluent-kafka client (rd_kafka_t *rk; NULL once closed). bind()
 * checks that the library is the one confluent-kafka reports and takes confluent-kafka's Producer and
 * Consumer types: a handle is read only from an instance of one of them (client_rk), of the
 * matching librdkafka type, never from any other object.
 */
#include "_rdkafka_abi.h"
#include <dlfcn.h>
#include <string.h>

HIDDEN RdApi rd;

/* bind(path, expected_version) -> None: resolve librdkafka's functions in the loaded library */
static PyObject *rb_bind(PyObject *Py_UNUSED(self), PyObject *args) {
        const char *path;
        int expected;
        void *h;
        PyTypeObject *ptype, *ctype;
        if (!PyArg_ParseTuple(args, "siO!O!", &path, &expected, &PyType_Type, &ptype, &PyType_Type, &ctype))
                return NULL;
        if (rd.bound) {
                PyErr_SetString(PyExc_RuntimeError, "librdkafka is bound already");
                return NULL;
        }
        h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (!h) {
                PyErr_Format(PyExc_ImportError, "librdkafka is not loaded from %s: %s", path, dlerror());
                return NULL;
        }
#define BIND(field, name)                                                                  \
        do {                                                                               \
                *(void **)(&rd.field) = dlsym(h, name);                                    \
                if (!rd.field) {                                                           \
                        PyErr_Format(PyExc_ImportError, "%s has no %s", path, name);       \
                        return NULL;                                                       \
                }                                                                          \
        } while (0)
        BIND(version, "rd_kafka_version");
        BIND(type, "rd_kafka_type");
        BIND(queue_new, "rd_kafka_queue_new");
        BIND(queue_destroy, "rd_kafka_queue_destroy");
        BIND(queue_get_partition, "rd_kafka_queue_get_partition");
        BIND(queue_get_consumer, "rd_kafka_queue_get_consumer");
        BIND(queue_forward, "rd_kafka_queue_forward");
        BIND(queue_length, "rd_kafka_queue_length");
        BIND(consume_batch_queue, "rd_kafka_consume_batch_queue");
        BIND(message_destroy, "rd_kafka_message_destroy");
        BIND(message_timestamp, "rd_kafka_message_timestamp");
        BIND(err2str, "rd_kafka_err2str");
        BIND(produceva, "rd_kafka_produceva");
        BIND(topic_new, "rd_kafka_topic_new");
        BIND(topic_destroy, "rd_kafka_topic_destroy");
        BIND(error_code, "rd_kafka_error_code");
        BIND(error_string, "rd_kafka_error_string");
        BIND(error_destroy, "rd_kafka_error_destroy");
        BIND(brokers_add, "rd_kafka_brokers_add");
#undef BIND
        if (rd.version() != expected) {
                PyErr_Format(PyExc_ImportError, "%s is librdkafka 0x%x, confluent-kafka uses 0x%x", path,
                             rd.version(), expected);
                return NULL;
        }
        Py_INCREF(ptype);
        Py_INCREF(ctype);
        rd.producer_type = ptype; /* kept for the process, like the library */
        rd.consumer_type = ctype;
        rd.bound = 1;
        /* the handle (dlopen's reference) stays open: the library is confluent-kafka's, for the process */
        Py_RETURN_NONE;
}

HIDDEN rd_kafka_t *client_rk(PyObject *client, int want_producer) {
        PyTypeObject *want;
        rd_kafka_t *rk;
        if (!rd.bound) {
                PyErr_SetString(PyExc_RuntimeError, "bind() librdkafka first");
                return NULL;
        }
        want = want_producer ? rd.producer_type : rd.consumer_type;
        if (!PyObject_TypeCheck(client, want)) {
                PyErr_Format(PyExc_TypeError, "expected a confluent-kafka %s, got %.200s", want->tp_name,
                             Py_TYPE(client)->tp_name);
                return NULL;
        }
        if (!(rk = ((CflHandle *)client)->rk)) {
                PyErr_Format(PyExc_RuntimeError, "the %s is closed", want_producer ? "producer" : "consumer");
                return NULL;
        }
        if (rd.type(rk) != (want_producer ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER)) {
                PyErr_SetString(PyExc_TypeError, want_producer ? "not a producer handle" : "not a consumer handle");
                return NULL;
        }
        return rk;
}

/*
 * add_brokers(client, brokerlist) -> int: librdkafka's public rd_kafka_brokers_add on a producer or
 * consumer: the "host:port[,host:port]" brokers are added as configured (bootstrap) brokers, those
 * already known as such are kept; returns how many of the list the client now has. What a KIP-1102
 * re-bootstrap does, for a client that knows no broker any more (streams/broker_watch.py).
 */
static PyObject *rb_add_brokers(PyObject *Py_UNUSED(self), PyObject *args) {
        PyObject *client;
        const char *brokers;
        rd_kafka_t *rk;
        int n;
        if (!PyArg_ParseTuple(args, "Os", &client, &brokers))
                return NULL;
        if (!rd.bound) {
                PyErr_SetString(PyExc_RuntimeError, "bind() librdkafka first");
                return NULL;
        }
        rk = client_rk(client, PyObject_TypeCheck(client, rd.producer_type));
        if (!rk)
                return NULL;
        Py_BEGIN_ALLOW_THREADS
        n = rd.brokers_add(rk, brokers);
        Py_END_ALLOW_THREADS
        return PyLong_FromLong(n);
}

/* ---- Ingest: one consumer's private queue and its partitions' forwards ------------------------ */

#define MAX_PARTS 4096

typedef struct {
        PyObject_HEAD
        PyObject *consumer;      /* keeps the confluent-kafka Consumer alive */
        PyObject *topic;         /* str */
        rd_kafka_queue_t *q;     /* the private queue; NULL once closed */
        rd_kafka_queue_t *parts[MAX_PARTS]; /* partition -> its fetch queue (attached), else NULL */
        Py_ssize_t n_attached;   /* non-NULL entries of parts */
        rd_kafka_message_t **buf;
        size_t buf_n;
} Ingest;

/* the consumer's handle (its type was checked by client_rk when Init kept it), or NULL once closed */
static rd_kafka_t *ingest_rk(Ingest *self) {
        rd_kafka_t *rk = ((CflHandle *)self->consumer)->rk;
        if (!rk)
                PyErr_SetString(PyExc_RuntimeError, "the consumer is closed");
        return rk;
}

static int Ingest_init(Ingest *self, PyObject *args, PyObject *kw) {
        PyObject *consumer, *topic;
        static char *kwlist[] = {"consumer", "topic", NULL};
        rd_kafka_t *rk;
        if (!rd.bound) {
                PyErr_SetString(PyExc_RuntimeError, "bind() librdkafka first");
                return -1;
        }
        if (!PyArg_ParseTupleAndKeywords(args, kw, "OU", kwlist, &consumer, &topic))
                return -1;
        if (self->q) {
                PyErr_SetString(PyExc_RuntimeError, "already initialised");
                return -1;
        }
        if (!(rk = client_rk(consumer, 0))) /* before it is kept: only a consumer's handle is ever read */
                return -1;
        Py_INCREF(consumer);
        Py_XSETREF(self->consumer, consumer);
        Py_INCREF(topic);
        Py_XSETREF(self->topic, topic);
        self->q = rd.queue_new(rk);
        return self->q ? 0 : -1;
}

static int part_arg(PyObject *arg, long *p) {
        *p = PyLong_AsLong(arg);
        if (*p == -1 && PyErr_Occurred())
                return -1;
        if (*p < 0 || *p >= MAX_PARTS) {
                PyErr_Format(PyExc_ValueError, "partition %ld out of range [0, %d)", *p, MAX_PARTS);
                return -1;
        }
        return 0;
}

/* attach(partition): forward the partition's fetch queue to the private queue */
static PyObject *Ingest_attach(Ingest *self, PyObject *arg) {
        long p;
        rd_kafka_t *rk;
        const char *topic;
        if (part_arg(arg, &p) || !(rk = ingest_rk(self)))
                return NULL;
        if (!self->q) {
                PyErr_SetString(PyExc_RuntimeError, "closed");
                return NULL;
        }
        if (self->parts[p])
                Py_RETURN_NONE;
        if (!(topic = PyUnicode_AsUTF8(self->topic)))
                return NULL;
        self->parts[p] = rd.queue_get_partition(rk, topic, (int32_t)p);
        if (!self->parts[p]) {
                PyErr_Format(PyExc_RuntimeError, "no queue for %s [%ld]", topic, p);
                return NULL;
        }
        rd.queue_forward(self->parts[p], self->q);
        self->n_attached++;
        Py_RETURN_NONE;
}

static void detach_one(Ingest *self, rd_kafka_t *rk, long p) {
        rd_kafka_queue_t *cq;
        if (!self->parts[p])
                return;
        if (rk && (cq = rd.queue_get_consumer(rk))) {
                rd.queue_forward(self->parts[p], cq); /* librdkafka's default forward */
                rd.queue_destroy(cq);
        }
        rd.queue_destroy(self->parts[p]);
        self->parts[p] = NULL;
        self->n_attached--;
}

/* detach(partition): forward the partition back to the consumer queue */
static PyObject *Ingest_detach(Ingest *self, PyObject *arg) {
        long p;
        rd_kafka_t *rk;
        if (part_arg(arg, &p) || !(rk = ingest_rk(self)))
                return NULL;
        detach_one(self, rk, p);
        Py_RETURN_NONE;
}

/* close(): detach every partition and release the private queue (before the consumer closes) */
static PyObject *Ingest_close(Ingest *self, PyObject *Py_UNUSED(unused)) {
        rd_kafka_t *rk;
        long p;
        if (!self->q)
                Py_RETURN_NONE;
        rk = ((CflHandle *)self->consumer)->rk; /* a consumer: checked when q was made */
        if (!rk) {
                PyErr_SetString(PyExc_RuntimeError, "the consumer closed before its ingest");
                return NULL;
        }
        for (p = 0; p < MAX_PARTS; p++)
                detach_one(self, rk, p);
        rd.queue_destroy(self->q);
        self->q = NULL;
        Py_RETURN_NONE;
}

/* attached() -> list[int] */
static PyObject *Ingest_attached(Ingest *self, PyObject *Py_UNUSED(unused)) {
        PyObject *out = PyList_New(0);
        long p;
        if (!out)
                return NULL;
        for (p = 0; p < MAX_PARTS; p++) {
                if (self->parts[p]) {
                        PyObject *v = PyLong_FromLong(p);
                        if (!v || PyList_Append(out, v)) {
                                Py_XDECREF(v);
                                Py_DECREF(out);
                                return NULL;
                        }
                        Py_DECREF(v);
                }
        }
        return out;
}

/* queued() -> int: messages waiting in the private queue (0 once closed) */
static PyObject *Ingest_queued(Ingest *self, PyObject *Py_UNUSED(unused)) {
        if (!self->q)
                return PyLong_FromLong(0);
        if (!ingest_rk(self))
                return NULL;
        return PyLong_FromSize_t(rd.queue_length(self->q));
}

/* attached_count() -> int: how many partitions are attached */
static PyObject *Ingest_attached_count(Ingest *self, PyObject *Py_UNUSED(unused)) {
        return PyLong_FromSsize_t(self->n_attached);
}

static PyObject *bytes_or_none(const void *p, size_t n) {
        if (!p)
                Py_RETURN_NONE;
        return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
}

/*
 * consume(max_messages, timeout_s, wait_all=False)
 *     -> (values, keys, partitions, offsets, timestamps_ms, errors, nbytes, max_value, max_key)
 *
 * Waits up to timeout_s (GIL released) for the first message, then takes what else has arrived,
 * without waiting, up to max_messages; wait_all: waits for max_messages or the timeout instead
 * (confluent-kafka's consume()).
 * values/keys: list[bytes | None]; partitions/offsets/timestamps_ms: list[int] (timestamp -1 when
 * the record has none); errors: list[(partition, offset, code, reason)] for error events
 * (partition EOF included), which are not records and are not in the other lists; nbytes: the
 * records' value bytes in all, max_value / max_key: the longest value / key (bytes).
 */
static PyObject *Ingest_consume(Ingest *self, PyObject *args) {
        Py_ssize_t max_n, n, i, k = 0;
        size_t nbytes = 0, max_value = 0, max_key = 0;
        double timeout_s;
        int timeout_ms;
        rd_kafka_queue_t *q = self->q;
        PyObject *values = NULL, *keys = NULL, *parts = NULL, *offs = NULL, *ts = NULL, *errs = NULL;
        PyObject *out = NULL;
        int wait_all = 0;
        if (!PyArg_ParseTuple(args, "nd|p", &max_n, &timeout_s, &wait_all))
                return NULL;
        if (!q) {
                PyErr_SetString(PyExc_RuntimeError, "closed");
                return NULL;
        }
        if (!ingest_rk(self))
                return NULL;
        if (max_n < 1 || max_n > 1000000) {
                PyErr_Format(PyExc_ValueError, "max_messages %zd out of range [1, 1000000]", max_n);
                return NULL;
        }
        timeout_ms = timeout_s <= 0 ? 0 : (timeout_s > 3600 ? 3600000 : (int)(timeout_s * 1000.0 + 0.5));
        if ((size_t)max_n > self->buf_n) {
                rd_kafka_message_t **b = PyMem_Realloc(self->buf, sizeof(*b) * (size_t)max_n);
                if (!b)
                        return PyErr_NoMemory();
                self->buf = b;
                self->buf_n = (size_t)max_n;
        }
        if (timeout_ms > 0) {
                Py_BEGIN_ALLOW_THREADS
                n = rd.consume_batch_queue(q, timeout_ms, self->buf, wait_all ? (size_t)max_n : 1);
                Py_END_ALLOW_THREADS
                if (!wait_all && n == 1 && max_n > 1) {
                        Py_ssize_t more = rd.consume_batch_queue(q, 0, self->buf + 1, (size_t)max_n - 1);
                        n = more < 0 ? more : n + more;
                }
        } else {
                n = rd.consume_batch_queue(q, 0, self->buf, (size_t)max_n);
        }
        if (n < 0) {
                PyErr_SetString(PyExc_RuntimeError, "rd_kafka_consume_batch_queue failed");
                return NULL;
        }
        for (i = 0; i < n; i++)
                k += self->buf[i]->err == 0;
        if (!(values = PyList_New(k)) || !(keys = PyList_New(k)) || !(parts = PyList_New(k)) ||
            !(offs = PyList_New(k)) || !(ts = PyList_New(k)) || !(errs = PyList_New(0)))
                goto done;
        k = 0;
        for (i = 0; i < n; i++) {
                rd_kafka_message_t *m = self->buf[i];
                PyObject *v;
                if (m->err) {
                        /* the reason: the event's payload (any bytes: undecodable ones replaced), else the code's text */
                        PyObject *reason = m->payload
                            ? PyUnicode_DecodeUTF8((const char *)m->payload, (Py_ssize_t)m->len, "replace")
                            : PyUnicode_FromString(rd.err2str(m->err));
                        if (!reason)
                                goto done;
                        v = Py_BuildValue("(iLiN)", (int)m->partition, (long long)m->offset, m->err, reason);
                        if (!v || PyList_Append(errs, v)) {
                                Py_XDECREF(v);
                                goto done;
                        }
                        Py_DECREF(v);
                        continue;
                }
                nbytes += m->len;
                if (m->len > max_value)
                        max_value = m->len;
                if (m->key_len > max_key)
                        max_key = m->key_len;
                if (!(v = bytes_or_none(m->payload, m->len)))
                        goto done;
                PyList_SET_ITEM(values, k, v);
                if (!(v = bytes_or_none(m->key, m->key_len)))
                        goto done;
                PyList_SET_ITEM(keys, k, v);
                if (!(v = PyLong_FromLong(m->partition)))
                        goto done;
                PyList_SET_ITEM(parts, k, v);
                if (!(v = PyLong_FromLongLong(m->offset)))
                        goto done;
                PyList_SET_ITEM(offs, k, v);
                if (!(v = PyLong_FromLongLong(rd.message_timestamp(m, NULL))))
                        goto done;
                PyList_SET_ITEM(ts, k, v);
                k++;
        }
        out = Py_BuildValue("(OOOOOOnnn)", values, keys, parts, offs, ts, errs, (Py_ssize_t)nbytes,
                            (Py_ssize_t)max_value, (Py_ssize_t)max_key);
done:
        for (i = 0; i < n; i++)
                rd.message_destroy(self->buf[i]);
        Py_XDECREF(values);
        Py_XDECREF(keys);
        Py_XDECREF(parts);
        Py_XDECREF(offs);
        Py_XDECREF(ts);
        Py_XDECREF(errs);
        return out;
}

static void Ingest_dealloc(Ingest *self) {
        /* close() if the caller did not: the consumer is still alive (this object holds a reference
         * to it), and librdkafka's rd_kafka_destroy waits for the queues we hold. Once the consumer
         * was closed (its handle gone) the queues can only be leaked. */
        if (self->q && self->consumer && ((CflHandle *)self->consumer)->rk) {
                PyObject *r = Ingest_close(self, NULL);
                if (!r)
                        PyErr_WriteUnraisable((PyObject *)self);
                Py_XDECREF(r);
        }
        PyMem_Free(self->buf);
        Py_XDECREF(self->consumer);
        Py_XDECREF(self->topic);
        Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Ingest_methods[] = {
    {"attach", (PyCFunction)Ingest_attach, METH_O, "attach(partition): consume it through this ingest"},
    {"detach", (PyCFunction)Ingest_detach, METH_O, "detach(partition): back to the consumer queue"},
    {"close", (PyCFunction)Ingest_close, METH_NOARGS, "close(): detach all, release the queue"},
    {"attached", (PyCFunction)Ingest_attached, METH_NOARGS, "attached() -> list[int]"},
    {"queued", (PyCFunction)Ingest_queued, METH_NOARGS, "queued() -> messages waiting"},
    {"attached_count", (PyCFunction)Ingest_attached_count, METH_NOARGS, "attached_count() -> partitions attached"},
    {"consume", (PyCFunction)Ingest_consume, METH_VARARGS,
     "consume(max_messages, timeout_s, wait_all=False) -> (values, keys, partitions, offsets, timestamps_ms, errors, "
     "nbytes, max_value, max_key)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject IngestType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mystocks_gpu.streams._rdbatch.Ingest",
    .tp_basicsize = sizeof(Ingest),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ingest(consumer, topic): columnar batches of one consumer's assigned partitions",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ingest_init,
    .tp_dealloc = (destructor)Ingest_dealloc,
    .tp_methods = Ingest_methods,
};

static PyMethodDef module_methods[] = {
    {"bind", rb_bind, METH_VARARGS,
     "bind(path, expected_version, producer_type, consumer_type): resolve the loaded librdkafka; handles are "
     "read only from instances of the two confluent-kafka types"},
    {"produce_many", rb_produce_many, METH_VARARGS,
     "produce_many(producer, topic, values, keys, timestamps_ms, headers, partition, start, stop[, partitions]) -> "
     "(sent, code, reason)"},
    {"partitions_of", rb_partitions_of, METH_VARARGS,
     "partitions_of(keys, n, null_partition) -> bytes of int32: each key's partition by Java's murmur2"},
    {"add_brokers", rb_add_brokers, METH_VARARGS,
     "add_brokers(client, brokerlist) -> int: rd_kafka_brokers_add on a confluent-kafka Producer or Consumer"},
    {"size_bound", rb_size_bound, METH_VARARGS, "size_bound(values, keys) -> largest value + largest key, bytes"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_rdbatch",
                                       "Columnar batch ingest over librdkafka (see columnar_io.py)", -1,
                                       module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rdbatch(void) {
        PyObject *m;
        if (PyType_Ready(&IngestType) < 0 || PyType_Ready(&SenderType) < 0)
                return NULL;
        if (!(m = PyModule_Create(&moduledef)))
                return NULL;
        Py_INCREF(&IngestType);
        if (PyModule_AddIntConstant(m, "MAX_PARTITIONS", MAX_PARTS) < 0) {
                Py_DECREF(m);
                return NULL;
        }
        if (PyModule_AddObject(m, "Ingest", (PyObject *)&IngestType) < 0) {
                Py_DECREF(&IngestType);
                Py_DECREF(m);
                return NULL;
        }
        Py_INCREF(&SenderType);
        if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0) {
                Py_DECREF(&SenderType);
                Py_DECREF(m);
                return NULL;
        }
        return m;
}
