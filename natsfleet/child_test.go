package natsfleet_test

const childEnv = "NATSFLEET_TEST_CHILD"

func runChild() int { return 0 }
