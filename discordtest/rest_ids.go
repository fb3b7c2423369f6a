package discordtest

// ChannelID returns the ID of channel c (0-based) of the i-th guild, for
// REST calls such as POST /channels/{id}/messages.
func (s *Server) ChannelID(i, c int) uint64 { return subID(i, kindChannel, c) }

// MemberID returns the user ID of member m (0-based) of the i-th guild;
// member 0 is the bot itself.
func (s *Server) MemberID(i, m int) uint64 { return s.userID(i, m) }
