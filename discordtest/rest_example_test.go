package discordtest_test

import (
	"fmt"
	"net/http"

	"github.com/gofleet/fleet/discordtest"
)

// A test makes Discord fail on purpose, then checks what the client did.
func ExampleServer_FailNextREST() {
	srv := discordtest.NewServer(discordtest.WithGuilds(1))
	defer srv.Close()
	srv.FailNextREST("GET /users/@me", http.StatusBadGateway, 1)

	for range 2 {
		req, _ := http.NewRequest(http.MethodGet, srv.RESTURL()+"/users/@me", nil)
		req.Header.Set("Authorization", "Bot "+srv.Token())
		rs, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(err)
		}
		rs.Body.Close()
		fmt.Println(rs.StatusCode, rs.Header.Get("X-RateLimit-Limit"), rs.Header.Get("Via"))
	}
	http.DefaultClient.CloseIdleConnections()
	st := srv.Stats().REST
	fmt.Println(st.Requests["GET /users/@me"], st.Statuses)
	// Output:
	// 502 5 1.1 google
	// 200 5 1.1 google
	// 2 map[200:1 502:1]
}
