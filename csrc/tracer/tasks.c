/* The per-task state of rewritten calls in flight (touched by the tracer thread only):
 * open addressing on the tid, backward-shift deletion. */
#include "core.h"

#include <stdlib.h>
#include <string.h>

/* ---- per-task state of rewritten calls: open addressing, backward-shift deletion --- */

static size_t tslot(pc_tracer *t, pid_t tid) { return ((size_t)tid * 2654435761u) & (t->tasks_cap - 1); }

task_state *task_find(pc_tracer *t, pid_t tid)
{
    for (size_t i = tslot(t, tid);; i = (i + 1) & (t->tasks_cap - 1)) {
        if (t->tasks[i].tid == tid)
            return &t->tasks[i];
        if (t->tasks[i].tid == 0)
            return NULL;
    }
}

task_state *task_add(pc_tracer *t, pid_t tid)
{
    task_state *s = task_find(t, tid);
    if (s)
        return s;
    if ((t->tasks_used + 1) * 2 > t->tasks_cap) {
        size_t old = t->tasks_cap;
        task_state *o = t->tasks;
        task_state *n = calloc(old * 2, sizeof *n);
        if (!n)
            return NULL;
        t->tasks = n;
        t->tasks_cap = old * 2;
        t->tasks_used = 0;
        for (size_t i = 0; i < old; i++)
            if (o[i].tid) {
                task_state *d = task_add(t, o[i].tid);
                *d = o[i];
            }
        free(o);
    }
    size_t i = tslot(t, tid);
    while (t->tasks[i].tid)
        i = (i + 1) & (t->tasks_cap - 1);
    memset(&t->tasks[i], 0, sizeof t->tasks[i]);
    t->tasks[i].tid = tid;
    t->tasks_used++;
    return &t->tasks[i];
}

void task_del(pc_tracer *t, pid_t tid)
{
    size_t mask = t->tasks_cap - 1;
    size_t i = tslot(t, tid);
    while (t->tasks[i].tid != tid) {
        if (t->tasks[i].tid == 0)
            return;
        i = (i + 1) & mask;
    }
    free(t->tasks[i].execfn);
    free(t->tasks[i].exe_logical);
    t->tasks[i].tid = 0;
    t->tasks_used--;
    for (size_t j = (i + 1) & mask; t->tasks[j].tid; j = (j + 1) & mask) {
        size_t home = tslot(t, t->tasks[j].tid);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->tasks[i] = t->tasks[j];
            t->tasks[j].tid = 0;
            i = j;
        }
    }
}
