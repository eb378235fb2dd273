/* The answer table: results Python computed for a path (or for a descriptor's
 * target), replayed by C for identical calls. Python writes, the fast paths read
 * (the notification thread among them), under a read-write lock. */
#include "core.h"

#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

answer *answer_find(pc_tracer *t, char follow, const char *path, size_t len)
{
    uint64_t h = fnv1a(path, len) ^ (uint64_t)follow;
    for (size_t i = h & (t->answers_cap - 1);; i = (i + 1) & (t->answers_cap - 1)) {
        answer *a = &t->answers[i];
        if (!a->key)
            return NULL;
        if (a->key[0] == follow && strncmp(a->key + 1, path, len) == 0 && a->key[len + 1] == '\0')
            return a;
    }
}

static void clear_locked(pc_tracer *t)
{
    for (size_t i = 0; i < t->answers_cap; i++) {
        free(t->answers[i].key);
        free(t->answers[i].link);
        free(t->answers[i].open_target);
    }
    memset(t->answers, 0, t->answers_cap * sizeof(answer));
    t->answers_used = 0;
}

void pc_table_clear(pc_tracer *t)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    clear_locked(t);
    pthread_rwlock_unlock(&t->answers_lock);
}

int pc_table_size(pc_tracer *t) { return (int)t->answers_used; }

static answer *slot_locked(pc_tracer *t, const char *key, int follow)
{
    size_t len = strlen(key);
    char f = follow ? 'F' : 'N';
    if ((t->answers_used + 1) * 2 > t->answers_cap)
        clear_locked(t); /* a cache: start over rather than grow without bound */
    answer *a = answer_find(t, f, key, len);
    if (a)
        return a;
    uint64_t h = fnv1a(key, len) ^ (uint64_t)f;
    size_t i = h & (t->answers_cap - 1);
    while (t->answers[i].key)
        i = (i + 1) & (t->answers_cap - 1);
    a = &t->answers[i];
    a->key = malloc(len + 2);
    if (!a->key)
        return NULL;
    a->key[0] = f;
    memcpy(a->key + 1, key, len + 1);
    t->answers_used++;
    return a;
}

int pc_table_put_open(pc_tracer *t, const char *key, int follow, const char *target, int is_dir)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, follow);
    int rc = -1;
    if (a) {
        free(a->open_target);
        a->open_len = (int)strlen(target);
        a->open_target = strdup(target);
        a->open_is_dir = is_dir;
        rc = a->open_target ? 0 : -1;
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return rc;
}

int pc_table_put(pc_tracer *t, const char *key, int follow, int err, const void *stat_buf,
                 const void *statx_buf, const int8_t *access_err, const char *link, int link_len)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, follow);
    int rc = -1;
    if (a) {
        a->err = err;
        a->has_stat = stat_buf != NULL;
        a->has_statx = statx_buf != NULL;
        a->has_access = access_err != NULL;
        if (stat_buf)
            memcpy(a->stat, stat_buf, sizeof a->stat);
        if (statx_buf)
            memcpy(a->statx, statx_buf, sizeof a->statx);
        if (access_err)
            memcpy(a->access, access_err, sizeof a->access);
        free(a->link);
        a->link = NULL;
        a->is_link = link != NULL;
        rc = 0;
        if (link) {
            a->link = malloc((size_t)link_len + 1);
            if (a->link) {
                memcpy(a->link, link, (size_t)link_len);
                a->link_len = link_len;
            } else {
                a->is_link = 0;
                rc = -1;
            }
        }
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return rc;
}
