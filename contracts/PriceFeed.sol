// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title PriceFeed
/// @notice Mock Chainlink-style oracle plus a mock lending position, for flows that
/// trigger on state (price below X, health factor below 1e18) rather than on events.
/// Setters are open on purpose: tests and demos drive them from any account.
contract PriceFeed {
    uint8 public constant decimals = 8;
    int256 public latestAnswer;
    uint256 public latestRound;
    uint256 public updatedAt;
    mapping(address => uint256) public healthFactor;

    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);
    event HealthFactorSet(address indexed account, uint256 healthFactor);

    constructor(int256 initialPrice) {
        _setPrice(initialPrice);
    }

    function setPrice(int256 price) external {
        _setPrice(price);
    }

    /// @param factor 1e18 means exactly at the liquidation threshold, as in Aave.
    function setHealthFactor(address account, uint256 factor) external {
        healthFactor[account] = factor;
        emit HealthFactorSet(account, factor);
    }

    function _setPrice(int256 price) private {
        latestAnswer = price;
        latestRound += 1;
        updatedAt = block.timestamp;
        emit AnswerUpdated(price, latestRound, block.timestamp);
    }
}
