/*
 * Producing from columns (see _rdbatch.c for how librdkafka is bound, columnar_io.py and
 * send_pipeline.py for the Python side):
 *
 *   - produce_many: records of Python lists, one rd_kafka_produceva each, without the GIL;
 *   - Sender: the same on a thread of its own (a pthread that never takes the GIL), job after job
 *     in submission order, so the worker's thread goes on with the next batch meanwhile;
 *   - size_bound: the largest value + the largest key of two lists, in one pass;
 *   - partitions_of: each key's partition by Java's murmur2 (the producer's murmur2_random), so
 *     at-least-once workers know where every record goes (streams/delivery_fences.py).
 */
#include "_rdkafka_abi.h"
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* ---- produce_many: records from columns, one rd_kafka_produceva each ------------------------- */

static int mem_arg(PyObject *o, void **ptr, size_t *len, const char *what, Py_ssize_t i) {
        if (o == Py_None) {
                *ptr = NULL;
                *len = 0;
                return 0;
        }
        if (!PyBytes_Check(o)) {
                PyErr_Format(PyExc_TypeError, "%s %zd must be bytes or None, not %.80s", what, i, Py_TYPE(o)->tp_name);
                return -1;
        }
        *ptr = PyBytes_AS_STRING(o);
        *len = (size_t)PyBytes_GET_SIZE(o);
        return 0;
}

/* ---- a batch of records gathered from the columns (with the GIL), sent without it ------------- */

/* one record's fields (vo/ko: the references the batch holds, so they outlive any list change) */
typedef struct {
        void *v, *k;
        size_t vl, kl;
        int64_t t;
        int32_t p; /* its partition (the batch's, or its own from a partitions column) */
        PyObject *vo, *ko;
} Rec;

typedef struct {
        rd_kafka_t *rk;
        rd_kafka_topic_t *rkt; /* one handle for the batch: naming the topic per record (VTYPE_TOPIC)
                                  looks it up under the client's lock for every record */
        int32_t partition;
        Rec *recs;
        Py_ssize_t n, nh;
        PyObject *pairs[MAX_HEADERS];        /* the header (str, bytes) pairs, referenced */
        rd_kafka_vu_t hvu[MAX_HEADERS];      /* their VTYPE_HEADER entries (pointers into the pairs) */
        /* the outcome of send_batch */
        Py_ssize_t sent;
        int code;
        char reason[256];
} Batch;

/* drop what gather() took: the first n records' references, the header pairs, the topic handle */
static void release_batch(Batch *b, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) {
                Py_DECREF(b->recs[i].vo);
                Py_DECREF(b->recs[i].ko);
        }
        for (i = 0; i < b->nh; i++)
                Py_DECREF(b->pairs[i]);
        b->nh = 0;
        PyMem_RawFree(b->recs);
        b->recs = NULL;
        if (b->rkt)
                rd.topic_destroy(b->rkt);
        b->rkt = NULL;
}

/* fill b with records start..stop-1 of the lists (GIL held); 0, or -1 with an exception set */
static int gather(Batch *b, rd_kafka_t *rk, const char *topic, PyObject *values, PyObject *keys, PyObject *ts,
                  PyObject *headers, int partition, const int32_t *parts, Py_ssize_t start, Py_ssize_t stop) {
        Py_ssize_t i, j;
        memset(b, 0, sizeof(*b));
        b->rk = rk;
        b->partition = partition;
        if (start < 0 || stop < start || stop > PyList_GET_SIZE(values) || stop > PyList_GET_SIZE(keys) ||
            stop > PyList_GET_SIZE(ts)) {
                PyErr_SetString(PyExc_ValueError, "start/stop outside the columns");
                return -1;
        }
        if (headers != Py_None) {
                if (!PyList_Check(headers) || PyList_GET_SIZE(headers) > MAX_HEADERS) {
                        PyErr_Format(PyExc_TypeError, "headers must be a list of at most %d (str, bytes) pairs", MAX_HEADERS);
                        return -1;
                }
                for (j = 0; j < PyList_GET_SIZE(headers); j++) {
                        PyObject *pair = PyList_GET_ITEM(headers, j), *name, *val;
                        const char *cname;
                        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
                            !PyUnicode_Check(name = PyTuple_GET_ITEM(pair, 0)) ||
                            !PyBytes_Check(val = PyTuple_GET_ITEM(pair, 1))) {
                                PyErr_SetString(PyExc_TypeError, "each header must be a (str, bytes) pair");
                                release_batch(b, 0);
                                return -1;
                        }
                        if (!(cname = PyUnicode_AsUTF8(name))) {
                                release_batch(b, 0);
                                return -1;
                        }
                        Py_INCREF(pair);
                        b->pairs[b->nh] = pair;
                        b->hvu[b->nh].vtype = VT_HEADER;
                        b->hvu[b->nh].u.header.name = cname;
                        b->hvu[b->nh].u.header.val = PyBytes_AS_STRING(val);
                        b->hvu[b->nh].u.header.size = PyBytes_GET_SIZE(val);
                        b->nh++;
                }
        }
        b->n = stop - start;
        if (b->n > 0 && !(b->recs = PyMem_RawMalloc((size_t)b->n * sizeof(Rec)))) {
                release_batch(b, 0);
                PyErr_NoMemory();
                return -1;
        }
        for (i = 0; i < b->n; i++) {
                PyObject *v = PyList_GET_ITEM(values, start + i), *k = PyList_GET_ITEM(keys, start + i);
                long long t = PyLong_AsLongLong(PyList_GET_ITEM(ts, start + i));
                if ((t == -1 && PyErr_Occurred()) || mem_arg(v, &b->recs[i].v, &b->recs[i].vl, "value", start + i) ||
                    mem_arg(k, &b->recs[i].k, &b->recs[i].kl, "key", start + i)) {
                        release_batch(b, i);
                        return -1;
                }
                b->recs[i].t = t;
                b->recs[i].p = parts ? parts[start + i] : partition;
                Py_INCREF(v);
                Py_INCREF(k);
                b->recs[i].vo = v;
                b->recs[i].ko = k;
        }
        if (!(b->rkt = rd.topic_new(rk, topic, NULL))) {
                PyErr_Format(PyExc_ValueError, "no topic handle for %s", topic);
                release_batch(b, b->n);
                return -1;
        }
        return 0;
}

/* produce the batch's records in order (no GIL needed); stops at the first error (b->sent, code) */
static void send_batch(Batch *b) {
        rd_kafka_vu_t vu[6 + MAX_HEADERS];
        Py_ssize_t i;
        vu[0].vtype = VT_RKT;
        vu[0].u.ptr = b->rkt;
        vu[1].vtype = VT_PARTITION;
        vu[2].vtype = VT_MSGFLAGS;
        vu[2].u.i = RD_KAFKA_MSG_F_COPY;
        vu[3].vtype = VT_VALUE;
        vu[4].vtype = VT_KEY;
        vu[5].vtype = VT_TIMESTAMP;
        memcpy(&vu[6], b->hvu, (size_t)b->nh * sizeof(rd_kafka_vu_t));
        b->code = 0;
        b->reason[0] = '\0';
        for (i = 0; i < b->n; i++) {
                rd_kafka_error_t *err;
                vu[3].u.mem.ptr = b->recs[i].v;
                vu[3].u.mem.size = b->recs[i].vl;
                vu[4].u.mem.ptr = b->recs[i].k;
                vu[4].u.mem.size = b->recs[i].kl;
                vu[5].u.i64 = b->recs[i].t;
                vu[1].u.i32 = b->recs[i].p;
                if ((err = rd.produceva(b->rk, vu, (size_t)(6 + b->nh)))) {
                        b->code = rd.error_code(err);
                        snprintf(b->reason, sizeof(b->reason), "%s", rd.error_string(err));
                        rd.error_destroy(err);
                        break;
                }
        }
        b->sent = i;
}

/*
 * produce_many(producer, topic, values, keys, timestamps_ms, headers, partition, start, stop[, partitions])
 *     -> (sent, code, reason)
 *
 * Produces records start..stop-1 of the columns (lists; values/keys bytes or None, timestamps int
 * ms) to topic, in order, each with the same headers (a list of (str, bytes) pairs, or None), to
 * partition (-1: librdkafka's partitioner by key), or, given partitions (a contiguous buffer of
 * int32, one per record of the columns, e.g. partitions_of's), each record to its own partition;
 * without the GIL while librdkafka copies and
 * queues them. No delivery report reaches Python (no opaque: confluent-kafka's delivery callback
 * ignores such messages), as with produce() without a callback. Stops at the first error: sent =
 * records produced; code = 0 when all were, else the librdkafka error code of record start + sent
 * (-184 = the queue is full: poll and resume).
 */
HIDDEN PyObject *rb_produce_many(PyObject *Py_UNUSED(self), PyObject *args) {
        PyObject *producer, *values, *keys, *ts, *headers, *parts = Py_None, *out;
        const char *topic;
        int partition, has_parts = 0;
        Py_ssize_t start, stop;
        Py_buffer view;
        rd_kafka_t *rk;
        Batch *b;
        if (!PyArg_ParseTuple(args, "OsO!O!O!Oinn|O", &producer, &topic, &PyList_Type, &values, &PyList_Type, &keys,
                              &PyList_Type, &ts, &headers, &partition, &start, &stop, &parts))
                return NULL;
        if (!(rk = client_rk(producer, 1)))
                return NULL;
        if (parts != Py_None) {
                if (PyObject_GetBuffer(parts, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT))
                        return NULL;
                has_parts = 1;
                if (view.itemsize != 4 || !view.format || (strcmp(view.format, "i") && strcmp(view.format, "=i") &&
                                                           strcmp(view.format, "<i") && strcmp(view.format, "l"))) {
                        PyBuffer_Release(&view);
                        PyErr_SetString(PyExc_TypeError, "partitions must be a contiguous int32 buffer");
                        return NULL;
                }
                if (view.len / 4 < stop) {
                        PyBuffer_Release(&view);
                        PyErr_SetString(PyExc_ValueError, "partitions is shorter than stop");
                        return NULL;
                }
        }
        if (!(b = PyMem_RawMalloc(sizeof(Batch)))) {
                if (has_parts)
                        PyBuffer_Release(&view);
                return PyErr_NoMemory();
        }
        if (gather(b, rk, topic, values, keys, ts, headers, partition, has_parts ? (const int32_t *)view.buf : NULL,
                   start, stop)) {
                if (has_parts)
                        PyBuffer_Release(&view);
                PyMem_RawFree(b);
                return NULL;
        }
        if (has_parts)
                PyBuffer_Release(&view); /* gather copied each record's partition */
        Py_BEGIN_ALLOW_THREADS
        send_batch(b);
        Py_END_ALLOW_THREADS
        out = Py_BuildValue("(nis)", b->sent, b->code, b->reason);
        release_batch(b, b->n);
        PyMem_RawFree(b);
        return out;
}

/* ---- Sender: batches sent on a thread of its own, in order ------------------------------------ */

typedef struct Job {
        struct Job *next;
        Batch b;
        int done; /* sent, or skipped (b.sent = 0, b.code = 0) because an earlier job stopped short */
} Job;

typedef struct {
        PyObject_HEAD
        PyObject *producer; /* a reference: its handle outlives the thread */
        rd_kafka_t *rk;
        pthread_t thread;
        int started, stop, halted, closed;
        pthread_mutex_t mu;
        pthread_cond_t work, done;
        Job *head, *tail; /* submitted and not yet collected, in order */
        Job *next_run;    /* the first job the thread has not taken yet */
        Py_ssize_t jobs, unfinished;
} Sender;

/* mark every job from j on as skipped (mu held) */
static void skip_from(Sender *s, Job *j) {
        for (; j; j = j->next) {
                if (!j->done) {
                        j->done = 1;
                        j->b.sent = 0;
                        j->b.code = 0;
                        snprintf(j->b.reason, sizeof(j->b.reason), "not run: an earlier job stopped short");
                        s->unfinished--;
                }
        }
        s->next_run = NULL;
}

static void *sender_main(void *arg) {
        Sender *s = arg;
        pthread_mutex_lock(&s->mu);
        for (;;) {
                Job *j;
                while (!s->stop && !s->next_run)
                        pthread_cond_wait(&s->work, &s->mu);
                if (s->stop)
                        break;
                j = s->next_run;
                s->next_run = j->next;
                pthread_mutex_unlock(&s->mu);
                send_batch(&j->b);
                pthread_mutex_lock(&s->mu);
                j->done = 1;
                s->unfinished--;
                if (j->b.sent < j->b.n) {
                        s->halted = 1;
                        skip_from(s, j->next);
                }
                pthread_cond_broadcast(&s->done);
        }
        pthread_mutex_unlock(&s->mu);
        return NULL;
}

static int Sender_init(Sender *self, PyObject *args, PyObject *kw) {
        PyObject *producer;
        static char *kwlist[] = {"producer", NULL};
        if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &producer))
                return -1;
        if (self->producer) {
                PyErr_SetString(PyExc_RuntimeError, "Sender is initialised once");
                return -1;
        }
        if (!(self->rk = client_rk(producer, 1)))
                return -1;
        Py_INCREF(producer);
        self->producer = producer;
        pthread_mutex_init(&self->mu, NULL);
        pthread_cond_init(&self->work, NULL);
        pthread_cond_init(&self->done, NULL);
        return 0;
}

/* submit(topic, values, keys, timestamps_ms, headers, partition) -> None */
static PyObject *Sender_submit(Sender *self, PyObject *args) {
        PyObject *values, *keys, *ts, *headers;
        const char *topic;
        int partition;
        Job *j;
        if (!self->producer || self->closed) {
                PyErr_SetString(PyExc_RuntimeError, "the sender is closed");
                return NULL;
        }
        if (!PyArg_ParseTuple(args, "sO!O!O!Oi", &topic, &PyList_Type, &values, &PyList_Type, &keys, &PyList_Type, &ts,
                              &headers, &partition))
                return NULL;
        if (!((CflHandle *)self->producer)->rk) {
                PyErr_SetString(PyExc_RuntimeError, "the producer is closed");
                return NULL;
        }
        if (!(j = PyMem_RawMalloc(sizeof(Job))))
                return PyErr_NoMemory();
        if (gather(&j->b, self->rk, topic, values, keys, ts, headers, partition, NULL, 0, PyList_GET_SIZE(values))) {
                PyMem_RawFree(j);
                return NULL;
        }
        j->next = NULL;
        j->done = 0;
        if (!self->started) {
                if (pthread_create(&self->thread, NULL, sender_main, self)) {
                        release_batch(&j->b, j->b.n);
                        PyMem_RawFree(j);
                        PyErr_SetString(PyExc_RuntimeError, "cannot start the send thread");
                        return NULL;
                }
                self->started = 1;
        }
        pthread_mutex_lock(&self->mu);
        if (self->tail)
                self->tail->next = j;
        else
                self->head = j;
        self->tail = j;
        self->jobs++;
        self->unfinished++;
        if (self->halted) {
                skip_from(self, j);
        } else {
                if (!self->next_run)
                        self->next_run = j;
                pthread_cond_signal(&self->work);
        }
        pthread_mutex_unlock(&self->mu);
        Py_RETURN_NONE;
}

/*
 * collect(keep) -> list of (n, sent, code, reason): waits (without the GIL) until at most keep
 * jobs are unfinished, then returns the finished jobs at the head of the queue, in submission
 * order, and forgets them. A halted sender runs jobs again only after a drain: collect(0) that
 * leaves no job (a collect with keep > 0 between submits may take the job that stopped short; the
 * jobs submitted after it are still skipped until the caller drains).
 */
static PyObject *Sender_collect(Sender *self, PyObject *args) {
        Py_ssize_t keep;
        Job *first, *j, *last = NULL;
        PyObject *out;
        if (!PyArg_ParseTuple(args, "n", &keep))
                return NULL;
        if (!(out = PyList_New(0)))
                return NULL;
        if (!self->producer || !self->started)
                return out;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mu);
        while (self->unfinished > (keep < 0 ? 0 : keep))
                pthread_cond_wait(&self->done, &self->mu);
        first = self->head;
        for (j = self->head; j && j->done; j = j->next) {
                last = j;
                self->jobs--;
        }
        if (last) {
                self->head = last->next;
                last->next = NULL;
                if (!self->head)
                        self->tail = NULL;
        } else {
                first = NULL;
        }
        /* only a drain (keep 0) that leaves no job ends a halt: a collect between submits that happens to
           take the job that stopped short must not let the next job run before the caller drained */
        if (!self->head && keep <= 0)
                self->halted = 0;
        pthread_mutex_unlock(&self->mu);
        Py_END_ALLOW_THREADS
        while (first) {
                Job *next = first->next;
                PyObject *r = out ? Py_BuildValue("(nnis)", first->b.n, first->b.sent, first->b.code, first->b.reason)
                                  : NULL;
                if (out && (!r || PyList_Append(out, r))) {
                        Py_CLEAR(out);
                }
                Py_XDECREF(r);
                release_batch(&first->b, first->b.n);
                PyMem_RawFree(first);
                first = next;
        }
        return out;
}

/* stop the thread (after the job it is sending), forget every job; idempotent */
static void sender_shutdown(Sender *self) {
        Job *j;
        if (self->started) {
                pthread_mutex_lock(&self->mu);
                self->stop = 1;
                pthread_cond_signal(&self->work);
                pthread_mutex_unlock(&self->mu);
                Py_BEGIN_ALLOW_THREADS
                pthread_join(self->thread, NULL);
                Py_END_ALLOW_THREADS
                self->started = 0;
        }
        while ((j = self->head)) {
                self->head = j->next;
                release_batch(&j->b, j->b.n);
                PyMem_RawFree(j);
        }
        self->tail = self->next_run = NULL;
        self->jobs = self->unfinished = 0;
        self->closed = 1;
}

static PyObject *Sender_close(Sender *self, PyObject *Py_UNUSED(unused)) {
        sender_shutdown(self);
        Py_RETURN_NONE;
}

static PyObject *Sender_len(Sender *self, PyObject *Py_UNUSED(unused)) {
        return PyLong_FromSsize_t(self->jobs);
}

static void Sender_dealloc(Sender *self) {
        if (self->producer) {
                sender_shutdown(self);
                pthread_mutex_destroy(&self->mu);
                pthread_cond_destroy(&self->work);
                pthread_cond_destroy(&self->done);
        }
        Py_XDECREF(self->producer);
        Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Sender_methods[] = {
    {"submit", (PyCFunction)Sender_submit, METH_VARARGS,
     "submit(topic, values, keys, timestamps_ms, headers, partition): queue one job (all records of the lists)"},
    {"collect", (PyCFunction)Sender_collect, METH_VARARGS,
     "collect(keep) -> [(n, sent, code, reason)]: wait until at most keep jobs are unfinished; the finished head jobs"},
    {"pending", (PyCFunction)Sender_len, METH_NOARGS, "pending() -> jobs submitted and not yet collected"},
    {"close", (PyCFunction)Sender_close, METH_NOARGS, "close(): stop the thread, forget every job"},
    {NULL, NULL, 0, NULL}};

HIDDEN PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mystocks_gpu.streams._rdbatch.Sender",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sender(producer): jobs of records produced on a thread of its own, in submission order",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sender_init,
    .tp_dealloc = (destructor)Sender_dealloc,
    .tp_methods = Sender_methods,
};

/*
 * size_bound(values, keys) -> int: the largest value's length plus the largest key's (None = 0), in
 * bytes, two lists: a bound of any record's key + value size, in one C pass (max(map(len, ...)) in
 * Python costs about 40 ns a record, a tenth of producing it)
 */
HIDDEN PyObject *rb_size_bound(PyObject *Py_UNUSED(self), PyObject *args) {
        PyObject *lists[2];
        Py_ssize_t best[2] = {0, 0}, i, k;
        if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &lists[0], &PyList_Type, &lists[1]))
                return NULL;
        for (k = 0; k < 2; k++) {
                for (i = 0; i < PyList_GET_SIZE(lists[k]); i++) {
                        PyObject *o = PyList_GET_ITEM(lists[k], i);
                        if (o == Py_None)
                                continue;
                        if (!PyBytes_Check(o)) {
                                PyErr_Format(PyExc_TypeError, "%s %zd must be bytes or None, not %.80s",
                                             k ? "key" : "value", i, Py_TYPE(o)->tp_name);
                                return NULL;
                        }
                        if (PyBytes_GET_SIZE(o) > best[k])
                                best[k] = PyBytes_GET_SIZE(o);
                }
        }
        return PyLong_FromSsize_t(best[0] + best[1]);
}


/* ---- partitions_of: Java's murmur2 partitioner --------------------------------------------------- */

/* Kafka's Utils.murmur2 (the Java client's default partitioner; librdkafka's murmur2_random) */
static int32_t murmur2(const unsigned char *data, size_t len) {
        const uint32_t m = 0x5bd1e995u;
        uint32_t h = 0x9747b28cu ^ (uint32_t)len;
        size_t i, tail = len & ~(size_t)3;
        for (i = 0; i < tail; i += 4) {
                uint32_t k = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
                             (uint32_t)data[i + 3] << 24;
                k *= m;
                k ^= k >> 24;
                k *= m;
                h *= m;
                h ^= k;
        }
        switch (len & 3) {
        case 3:
                h ^= (uint32_t)data[tail + 2] << 16; /* fall through */
        case 2:
                h ^= (uint32_t)data[tail + 1] << 8; /* fall through */
        case 1:
                h ^= (uint32_t)data[tail];
                h *= m;
        }
        h ^= h >> 13;
        h *= m;
        h ^= h >> 15;
        return (int32_t)h;
}

/*
 * partitions_of(keys, n, null_partition) -> bytes
 *
 * The partition of each key of the list (bytes or None) among n: (murmur2(key) & 0x7fffffff) % n,
 * as Kafka's Java producer and librdkafka's murmur2_random place keyed records; null_partition for
 * a None key. The result is n native int32 (numpy.frombuffer(..., numpy.int32)).
 */
HIDDEN PyObject *rb_partitions_of(PyObject *Py_UNUSED(self), PyObject *args) {
        PyObject *keys, *out;
        int n, null_partition;
        Py_ssize_t i, count;
        int32_t *dst;
        if (!PyArg_ParseTuple(args, "O!ii", &PyList_Type, &keys, &n, &null_partition))
                return NULL;
        if (n < 1 || null_partition < 0 || null_partition >= n) {
                PyErr_Format(PyExc_ValueError, "need n >= 1 and 0 <= null_partition < n (n=%d, null_partition=%d)", n,
                             null_partition);
                return NULL;
        }
        count = PyList_GET_SIZE(keys);
        if (!(out = PyBytes_FromStringAndSize(NULL, count * 4)))
                return NULL;
        dst = (int32_t *)PyBytes_AS_STRING(out);
        for (i = 0; i < count; i++) {
                PyObject *k = PyList_GET_ITEM(keys, i);
                if (k == Py_None) {
                        dst[i] = null_partition;
                } else if (PyBytes_Check(k)) {
                        dst[i] = (int32_t)(((uint32_t)murmur2((const unsigned char *)PyBytes_AS_STRING(k),
                                                              (size_t)PyBytes_GET_SIZE(k)) &
                                            0x7fffffffu) %
                                           (uint32_t)n);
                } else {
                        Py_DECREF(out);
                        PyErr_Format(PyExc_TypeError, "key %zd must be bytes or None, not %.80s", i, Py_TYPE(k)->tp_name);
                        return NULL;
                }
        }
        return out;
}
