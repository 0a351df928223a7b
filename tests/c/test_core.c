/*
 * test_core.c - entry point of the core's C tests, plus the status and dtype
 * tables. The other groups live in test_read.c, test_strided.c,
 * test_write.c and test_alloc.c.
 */
#include "harness.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* MARK: - Status table */

static const char *const k_status_names[STC_STATUS_COUNT] = {
    "STC_OK",
    "STC_ERR_NO_MEMORY",
    "STC_ERR_IO",
    "STC_ERR_NOT_SAFETENSORS",
    "STC_ERR_HEADER_TOO_SMALL",
    "STC_ERR_HEADER_TOO_LARGE",
    "STC_ERR_HEADER_LENGTH",
    "STC_ERR_INVALID_UTF8",
    "STC_ERR_INVALID_JSON",
    "STC_ERR_NESTING_TOO_DEEP",
    "STC_ERR_DUPLICATE_KEY",
    "STC_ERR_INVALID_HEADER",
    "STC_ERR_INVALID_OFFSETS",
    "STC_ERR_SIZE_OVERFLOW",
    "STC_ERR_MISALIGNED",
    "STC_ERR_SIZE_MISMATCH",
    "STC_ERR_TRUNCATED_DATA",
    "STC_ERR_TRAILING_DATA",
    "STC_ERR_FILE_CHANGED",
    "STC_ERR_INVALID_ARGUMENT",
    "STC_ERR_NOT_REGULAR_FILE",
};

static void test_status_names_and_messages(void) {
    for (size_t i = 0; i < STC_STATUS_COUNT; i++) {
        stc_status s = (stc_status)i;
        const char *name = stc_status_name(s);
        const char *message = stc_status_message(s);
        CHECK(name != NULL);
        CHECK(message != NULL);
        if (name == NULL || message == NULL) continue;
        CHECK(message[0] != '\0');
        /* The stable name is the enumerator's own spelling. */
        if (strcmp(name, k_status_names[i]) != 0) {
            fprintf(stderr, "    status %zu: name '%s', expected '%s'\n", i, name,
                    k_status_names[i]);
            CHECK(strcmp(name, k_status_names[i]) == 0);
        }
        for (size_t j = 0; j < i; j++) {
            const char *other = stc_status_name((stc_status)j);
            CHECK(other == NULL || strcmp(name, other) != 0);
        }
    }
}

static void test_status_out_of_range(void) {
    CHECK(strcmp(stc_status_name(STC_STATUS_COUNT), "STC_UNKNOWN") == 0);
    CHECK(strcmp(stc_status_name((stc_status)1000), "STC_UNKNOWN") == 0);
    CHECK(strcmp(stc_status_name((stc_status)-1), "STC_UNKNOWN") == 0);
    CHECK(stc_status_message(STC_STATUS_COUNT) != NULL);
    CHECK(stc_status_message((stc_status)-1) != NULL);
}

void run_status_tests(void) {
    test_status_names_and_messages();
    test_status_out_of_range();
}

/* MARK: - Dtype table */

static const struct {
    stc_dtype dtype;
    const char *name;
    unsigned bits;
} k_dtypes[STC_DTYPE_COUNT] = {
    {STC_BOOL, "BOOL", 8},           {STC_F4, "F4", 4},
    {STC_F6_E2M3, "F6_E2M3", 6},     {STC_F6_E3M2, "F6_E3M2", 6},
    {STC_U8, "U8", 8},               {STC_I8, "I8", 8},
    {STC_F8_E5M2, "F8_E5M2", 8},     {STC_F8_E4M3, "F8_E4M3", 8},
    {STC_F8_E8M0, "F8_E8M0", 8},     {STC_F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {STC_F8_E5M2FNUZ, "F8_E5M2FNUZ", 8}, {STC_I16, "I16", 16},
    {STC_U16, "U16", 16},            {STC_F16, "F16", 16},
    {STC_BF16, "BF16", 16},          {STC_I32, "I32", 32},
    {STC_U32, "U32", 32},            {STC_F32, "F32", 32},
    {STC_C64, "C64", 64},            {STC_F64, "F64", 64},
    {STC_I64, "I64", 64},            {STC_U64, "U64", 64},
};

static void test_dtype_table(void) {
    CHECK(STC_DTYPE_COUNT == 22);
    for (size_t i = 0; i < STC_DTYPE_COUNT; i++) {
        stc_dtype d = k_dtypes[i].dtype;
        CHECK((size_t)d == i); /* the enum value is the writer's rank */
        const char *name = stc_dtype_name(d);
        CHECK(name != NULL && strcmp(name, k_dtypes[i].name) == 0);
        CHECK(stc_dtype_bits(d) == k_dtypes[i].bits);
        stc_dtype back = STC_DTYPE_COUNT;
        CHECK(stc_dtype_from_name(k_dtypes[i].name, strlen(k_dtypes[i].name),
                                  &back) == 1);
        CHECK(back == d);
    }
}

static void test_dtype_invalid_values(void) {
    CHECK(stc_dtype_name(STC_DTYPE_COUNT) == NULL);
    CHECK(stc_dtype_bits(STC_DTYPE_COUNT) == 0);
    CHECK(stc_dtype_name((stc_dtype)99) == NULL);
    CHECK(stc_dtype_bits((stc_dtype)99) == 0);
    CHECK(stc_dtype_name((stc_dtype)-1) == NULL);
    CHECK(stc_dtype_bits((stc_dtype)-1) == 0);
}

static void test_dtype_from_name_is_exact(void) {
    static const char *const bad[] = {
        "f32", "F32 ", " F32", "F3", "F322", "bool", "Bool", "bf16", "F8_E4M3fn",
        "F8_E4M3FN", "f8_e5m2", "F6", "F8", "", "U128", "F32\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        stc_dtype out = STC_BF16;
        int found = stc_dtype_from_name(bad[i], strlen(bad[i]), &out);
        if (found) fprintf(stderr, "    accepted dtype code '%s'\n", bad[i]);
        CHECK(found == 0);
        CHECK(out == STC_BF16); /* untouched */
    }
    /* The length is authoritative: the bytes after it do not count. */
    stc_dtype out = STC_BOOL;
    CHECK(stc_dtype_from_name("F321", 3, &out) == 1 && out == STC_F32);
    CHECK(stc_dtype_from_name("F16", 2, &out) == 0);
    CHECK(stc_dtype_from_name("F32\0", 4, &out) == 0);
    /* Prefixes of longer codes are not codes. */
    CHECK(stc_dtype_from_name("F8_E4M3FNUZ", 7, &out) == 1 && out == STC_F8_E4M3);
    CHECK(stc_dtype_from_name("F8_E4M3FNU", 10, &out) == 0);
}

void run_dtype_tests(void) {
    test_dtype_table();
    test_dtype_invalid_values();
    test_dtype_from_name_is_exact();
}

/* MARK: - Main */

/* A hang (an endless retry loop, say) must fail the run, not stall it: each
 * group gets STC_TEST_TIMEOUT seconds (default 600). */
static const char *volatile g_group = "";

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "\nTIMEOUT: the test group did not finish: ";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    const char *group = g_group;
    ignored = write(2, group, strlen(group));
    ignored = write(2, "\n", 1);
    (void)ignored;
    _exit(3);
}

int main(void) {
    unsigned timeout = 600;
    const char *env = getenv("STC_TEST_TIMEOUT");
    if (env && *env) timeout = (unsigned)strtoul(env, NULL, 10);
    signal(SIGALRM, on_alarm);
    const struct {
        const char *name;
        void (*run)(void);
    } groups[] = {
        {"status", run_status_tests},
        {"dtype", run_dtype_tests},
        {"read: valid files", run_read_valid_tests},
        {"read: rejections", run_read_reject_tests},
        {"read: real files", run_file_tests},
        {"read: strided", run_strided_tests},
        {"writer", run_writer_tests},
        {"allocation failures", run_alloc_tests},
        {"sources", run_source_tests},
        {"fresh reads, changes", run_fresh_tests},
        {"backends", run_backend_tests},
    };
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        unsigned long failures_before = g_failures;
        unsigned long checks_before = g_checks;
        g_group = groups[i].name;
        alarm(timeout);
        groups[i].run();
        alarm(0);
        printf("%-22s %6lu checks, %lu failed\n", groups[i].name,
               g_checks - checks_before, g_failures - failures_before);
        fflush(stdout);
    }
    dir_remove_tree(scratch_root());
    printf("%s: %lu checks, %lu failed\n", g_failures ? "FAIL" : "OK", g_checks,
           g_failures);
    return g_failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
